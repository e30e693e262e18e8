// The same client as forward.mjs WITHOUT the proxy dispatcher: on Node 20 fetch ignores HTTPS_PROXY/HTTP_PROXY
// and reaches the upstream directly, bypassing Valet (tests/test_clients_forward_node.py shows it; docs/clients.md
// warns about it). Usage: node direct.mjs <the upstream's real URL>
import { listAndCall } from "./mcp-call.mjs";

await listAndCall(process.argv[2]);
