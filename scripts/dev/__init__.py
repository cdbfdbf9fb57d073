"""Development tools: the deploy linter (`python -m scripts.dev.lint_deploy`), bootstrap.sh, and
the detector-layout references (`python -m scripts.dev.darknet_reference`, building its models
with `scripts.dev.layout_models`; run once with OpenCV 4, see its docstring)."""
