// The TypeScript SDK talking to an MCP server by its real URL, shared by forward.mjs (through Valet in
// forward mode) and direct.mjs (the same client without a proxy dispatcher), for tests/test_clients_forward_node.py.
// No Authorization header: in forward mode the valet key travels as the proxy password.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

/** Lists the tools and calls whoami; prints one JSON line {"tools": {name: [argument names]}, "result": ..., "is_error": ...}
 * or "failed: <message>" with exit code 1. */
export async function listAndCall(url) {
  const transport = new StreamableHTTPClientTransport(new URL(url));
  const client = new Client({ name: "valet-forward-node", version: "1.0.0" });
  try {
    await client.connect(transport);
    const { tools } = await client.listTools();
    const result = await client.callTool({ name: "whoami", arguments: { text: "from node in forward mode" } });
    const names = Object.fromEntries(tools.map((t) => [t.name, Object.keys(t.inputSchema.properties ?? {}).sort()]));
    console.log(JSON.stringify({ tools: names, result: result.content[0].text, is_error: result.isError ?? false }));
  } catch (error) {
    console.log("failed:", error.message, error.cause?.message ?? "");
    process.exitCode = 1;
  } finally {
    await client.close();
  }
}
