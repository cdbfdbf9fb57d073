"""Development tools: the deploy linter (`python -m scripts.dev.lint_deploy`) and bootstrap.sh."""
