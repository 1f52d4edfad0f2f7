#!/usr/bin/env bash
# The chat backend against an OpenAI-compatible server this project did not write: FastChat 0.2.36's
# openai_api_server (controller + model worker on the CPU), serving the test-size teacher. Not part of
# the suite: it installs FastChat from PyPI into a throwaway directory. Usage (from the repository root):
#   tests/external/fastchat.sh MODEL_DIR       e.g. .autotraj/models/bootstrap-test-s0-v3/teacher
# FastChat reads rope_scaling["factor"], which a transformers-5 config leaves out: the copy it serves
# says so explicitly (linear, factor 1: no scaling). It applies its own conversation template, which
# the tiny teacher was not trained on, so what matters here is the protocol: every trajectory ends
# without error, and the usage FastChat reports lands in the rows and the report.
set -euo pipefail
model=${1:?usage: tests/external/fastchat.sh MODEL_DIR}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python=.venv/bin/python
.venv/bin/pip install -q --target "$work/site" --no-deps fschat==0.2.36 shortuuid nh3 markdown2 aiohttp \
  aiohappyeyeballs aiosignal frozenlist multidict yarl propcache tiktoken regex
cp -r "$model" "$work/model"
"$python" - "$work/model/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
config["rope_scaling"] = config["rope_parameters"] = {"rope_type": "linear", "factor": 1.0, "rope_theta": theta}
json.dump(config, open(path, "w"))
PY
export PYTHONPATH="$work/site" LOGDIR="$work"  # FastChat writes its logs to $LOGDIR
"$python" -m fastchat.serve.controller --host 127.0.0.1 --port 21001 > "$work/controller.log" 2>&1 &
sleep 5
"$python" -m fastchat.serve.model_worker --host 127.0.0.1 --port 21002 --worker-address http://127.0.0.1:21002 \
  --controller-address http://127.0.0.1:21001 --model-path "$work/model" --model-names default --device cpu \
  > "$work/worker.log" 2>&1 &
sleep 20
"$python" -m fastchat.serve.openai_api_server --host 127.0.0.1 --port 21003 \
  --controller-address http://127.0.0.1:21001 > "$work/api.log" 2>&1 &
sleep 10
unset PYTHONPATH
export AUTOTRAJ_HOME="$work/home"
.venv/bin/autotraj data synth --n 2 --seed 5 > /dev/null
.venv/bin/autotraj --set rollout.backend=openai-chat --set rollout.tokenizer="$model" \
  --set rollout.max_new_tokens_per_turn=64 --set rollout.max_total_tokens=256 --set tools.python.workers=1 \
  rollout --queries arith-s5-n2 --model "http://127.0.0.1:21003/v1#default" --n 2 --no-ray --name fastchat
.venv/bin/autotraj sql "SELECT finish_reason, error, usage_prompt_tokens, usage_completion_tokens FROM rollouts WHERE dataset = 'fastchat'"
