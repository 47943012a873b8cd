#!/usr/bin/env bash
# Prints plugin/krew/mesh.yaml for release VERSION (vX.Y.Z): spec.version and every uri set to
# that release, every sha256 that of the archive DIR/kubectl-mesh_<version>_<os>_<arch>.tar.gz.
# Used by .github/workflows/release.yml; plugin/tests/krew.rs runs it on stand-in archives.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 VERSION ARCHIVE_DIR   (for example: $0 v0.1.0 dist)" >&2
  exit 2
fi
version=$1 dir=$2
case "$version" in
  v[0-9]*) ;;
  *) echo "version $version must look like v1.2.3 (the git tag)" >&2; exit 2 ;;
esac
manifest="$(dirname "$0")/mesh.yaml"
awk -v version="$version" -v dir="$dir" '
  # spec.version comes before the platforms: every uri carries that version until replaced.
  /^  version: / { old = $2; print "  version: " version; next }
  /^    uri: / {
    uri = $2
    if (old == "") { print "mesh.yaml: spec.version must come before the platforms" > "/dev/stderr"; exit 1 }
    gsub(old, version, uri)
    n = split(uri, parts, "/"); archive = dir "/" parts[n]
    cmd = "sha256sum \"" archive "\" 2>/dev/null"
    sha = ""; cmd | getline sha; close(cmd)
    split(sha, fields, " "); sha = fields[1]
    if (length(sha) != 64) { print "missing archive " archive ": build it first" > "/dev/stderr"; failed = 1; exit 1 }
    print "    uri: " uri
    next
  }
  /^    sha256: / { print "    sha256: \"" sha "\""; next }
  { print }
  END { if (failed) exit 1 }
' "$manifest"
