#!/usr/bin/env bash
# The README's five-minute walkthrough as one script. The README shows these very commands;
# tests/test_walkthrough.py checks that it does, runs this script (CI runs it on every push) and
# compares what it prints with the outputs the README shows. From the repository root:
#     bash docs/walkthrough.sh
# It uses ports 9001 and 8787 like the README, keeps its state where VALET_DATA_DIR says (default
# ./.valet, as in the README; VALET_DATA_DIR="$(mktemp -d)" bash docs/walkthrough.sh leaves yours
# alone), and restores what it changes (the deleted secret, the edited policy file, call.py).
set -euo pipefail
cd "$(dirname "$0")/.."
set -m  # each background server gets its own process group, so cleanup stops make's children too
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$status" = 0 ] || { echo "--- terminal 2 (make run) printed:" >&2; cat .valet-run.log >&2 2>/dev/null || true; }
  rm -f call.py .valet-ready .valet-run.log
  [ ! -f .call.py.walkthrough-bak ] || mv .call.py.walkthrough-bak call.py   # the reader's own call.py
  [ ! -f policies/rules/demo.yaml.bak ] || mv policies/rules/demo.yaml.bak policies/rules/demo.yaml
}
trap cleanup EXIT
[ ! -f call.py ] || cp -p call.py .call.py.walkthrough-bak   # a call.py the reader made (README step 4) survives
step() { printf '\n### %s\n' "$*"; }

step "1. An MCP server to protect (terminal 1)"
make venv && .venv/bin/python tests/upstream/mcp_server.py --port 9001 > /dev/null 2>&1 &
pids+=($!)

step "2. Valet (terminal 2)"
rm -f .valet-ready
# terminal 2's output goes to its own file, so that Valet's log lines never interleave with what the
# commands below print (the test compares that output with the README)
make run ARGS="--ready-file .valet-ready" > .valet-run.log 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ -f .valet-ready ] && break; sleep 0.1; done   # scripts wait for the ready file
[ -f .valet-ready ] || { echo "valet did not start" >&2; exit 1; }
grep -m1 "listening on" .valet-run.log   # what terminal 2 shows

step "3. A key for the agent, and the secret it must never see"
KEY=$(.venv/bin/valet key create --user alice --agent notebook)   # printed once; only its hash is kept
printf 'fake-demo-token-123' | .venv/bin/valet secret set DEMO_TOKEN --server demo   # stdin or a no-echo prompt
.venv/bin/valet secret list

step "4. An agent calls through Valet"
cat > call.py <<'PY'
import asyncio, json, os, httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

async def main():
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {os.environ['KEY']}"})
    async with Client(streamable_http_client("http://127.0.0.1:8787/demo", http_client=http)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        print("tools/list:", ", ".join(sorted(tools)))
        if "whoami" in tools:
            print("whoami takes:", list(tools["whoami"].input_schema["properties"]))
        seen = json.loads((await c.call_tool("whoami", {"text": "hello"})).content[0].text)
        print("upstream got token:", seen["arguments"]["token"])
        print("upstream got header:", seen["headers"]["x-demo-token"])

try:
    asyncio.run(main())
except* MCPError as refused:  # the SDK nests errors in ExceptionGroups: print just Valet's message
    while isinstance(refused, BaseExceptionGroup):
        refused = refused.exceptions[-1]
    print(f"refused: {refused.message} (code {refused.code})")
PY
KEY=$KEY .venv/bin/python call.py

step "5. See it refused"
curl -s -XPOST http://127.0.0.1:8787/demo -H 'content-type: application/json' -d '{}'; echo
curl -s -XPOST http://127.0.0.1:8787/demo -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d '{bad'; echo
.venv/bin/valet secret delete DEMO_TOKEN --server demo
KEY=$KEY .venv/bin/python call.py
printf 'fake-demo-token-123' | .venv/bin/valet secret set DEMO_TOKEN --server demo   # put it back

step "6. See it audited"
.venv/bin/valet audit tail --no-follow -n 20
.venv/bin/valet audit query "SELECT tool, arguments, injected, decision FROM exchanges WHERE tool IS NOT NULL"

step "7. Change the policy while it runs"
.venv/bin/valet policy explain --user alice --server demo --tool die_midstream || true   # exit code 1: deny
sed -i.bak 's/tools: \[add, echo, whoami, progress\]/tools: [add, echo, progress]/' policies/rules/demo.yaml
sleep 2   # Valet reads a changed policy file once it has settled (1 s)
KEY=$KEY .venv/bin/python call.py
mv policies/rules/demo.yaml.bak policies/rules/demo.yaml   # restore the rule

step "8. Revoke the key"
.venv/bin/valet key revoke "$KEY"
KEY=$KEY .venv/bin/python call.py
