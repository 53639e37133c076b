# Sourced by the scripts: where Gauntlet's Python venv (PyTorch) lives and
# how cargo finds libtorch in it.
GAUNTLET_HOME="${GAUNTLET_HOME:-$HOME/.cache/gauntlet}"
GAUNTLET_VENV="$GAUNTLET_HOME/venv"
TORCH_VERSION="2.13.0"
export GAUNTLET_HOME GAUNTLET_VENV TORCH_VERSION
export LIBTORCH_USE_PYTORCH=1
export PATH="$GAUNTLET_VENV/bin:$HOME/.cargo/bin:$PATH"
