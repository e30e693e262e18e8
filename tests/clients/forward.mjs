// The TypeScript SDK through Valet in forward mode on Node 20+, as docs/clients.md "### Node" shows it.
// Usage: HTTPS_PROXY=http://agent:<valet key>@127.0.0.1:8787 HTTP_PROXY=... NODE_EXTRA_CA_CERTS=<valet ca>
//        node forward.mjs <the upstream's real URL>
// Node 20's fetch ignores the proxy variables; undici's EnvHttpProxyAgent reads them (and NO_PROXY), takes the
// proxy credentials from the URL (Proxy-Authorization: Basic) and tunnels with CONNECT; TLS trusts the
// NODE_EXTRA_CA_CERTS file on top of Node's own roots. Setting it as the global dispatcher routes the built-in
// fetch, which the SDK uses, through it.
// snippet: docs/clients.md shows the lines up to "end snippet"
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

setGlobalDispatcher(new EnvHttpProxyAgent()); // before the first request: fetch now goes through HTTPS_PROXY/HTTP_PROXY
// end snippet
import { listAndCall } from "./mcp-call.mjs";

await listAndCall(process.argv[2]);
