// The TypeScript SDK through Valet in reverse mode, on both transports, for tests/test_clients_matrix.py.
// Usage: VALET_KEY=vk_... node matrix.mjs http://127.0.0.1:8787/<server>[/sse]
// Prints one JSON line {"tools": {name: [argument names]}, "result": text of whoami, "is_error": ...},
// or "refused: <message>" and exits 1. A URL ending in /sse uses SSEClientTransport (2024-11-05).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(process.argv[2]);
// snippet: docs/clients.md shows the lines up to "end snippet"
const requestInit = { headers: { Authorization: `Bearer ${process.env.VALET_KEY}` } };
const transport = url.pathname.endsWith("/sse")
  ? new SSEClientTransport(url, { requestInit }) // a server on the 2024-11-05 HTTP+SSE transport
  : new StreamableHTTPClientTransport(url, { requestInit });
// end snippet
const client = new Client({ name: "valet-matrix", version: "1.0.0" });
try {
  await client.connect(transport);
  const { tools } = await client.listTools();
  const result = await client.callTool({ name: "whoami", arguments: { text: "from the typescript sdk" } });
  const names = Object.fromEntries(tools.map((t) => [t.name, Object.keys(t.inputSchema.properties ?? {}).sort()]));
  console.log(JSON.stringify({ tools: names, result: result.content[0].text, is_error: result.isError ?? false }));
} catch (error) {
  console.log("refused:", error.message);
  process.exitCode = 1;
} finally {
  await client.close();
}
