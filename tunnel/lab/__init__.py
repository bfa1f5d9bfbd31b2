"""The namespace lab: topology (netns), strongSwan reference peers (strongswan), fixtures.

Only tests, benchmarks and demos use it; it needs root, iproute2 and the Debian packages that
scripts/bootstrap.sh installs.
"""
