// The TypeScript SDK through Valet in reverse mode, as docs/clients.md shows it.
// Usage: VALET_KEY=vk_... node reverse.mjs http://127.0.0.1:8787/<server>
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const transport = new StreamableHTTPClientTransport(new URL(process.argv[2]), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.VALET_KEY}` } },
});
const client = new Client({ name: "valet-example", version: "1.0.0" });
try {
  await client.connect(transport);
  const { tools } = await client.listTools();
  console.log("tools:", tools.map((t) => t.name).sort().join(", "));
  const result = await client.callTool({ name: "add", arguments: { a: 2, b: 3 } });
  console.log("add:", result.content[0].text);
} catch (error) {
  console.log("refused:", error.message); // e.g. "Streamable HTTP error: ... a valet key is required"
  process.exitCode = 1;
} finally {
  await client.close();
}
