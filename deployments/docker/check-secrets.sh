#!/bin/sh
# Entrypoint guard of every container: refuse to start while a variable of the environment
# still holds .env.example's placeholder `change-me` (on every start, not only the first); one
# line naming the variable on stderr, exit 2. Then run the given command (exec, keeps PID 1's
# signals). Used by the Pynomaly image (ENTRYPOINT) and by the postgres service of compose.
set -e
names=$(env | while IFS= read -r line; do
    name=${line%%=*}
    case "$name" in
    "$line" | "" | [0-9]* | *[!A-Za-z0-9_]*) continue ;;  # no '=', or not a variable name
    esac
    printf '%s\n' "$name"
done)
for name in $names; do
    eval "value=\${$name-}"
    case "$value" in
    *change-me*)
        echo "error: $name holds the placeholder 'change-me' from .env.example: set a real secret" >&2
        exit 2
        ;;
    esac
done
[ "$#" -eq 0 ] || exec "$@"
