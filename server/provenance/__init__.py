"""Provenance of a run: what made it and proof that its files are unchanged.

- `manifest`: the signed `provenance.json` + `provenance.sig` of a run directory, and verifying them.
- `signing`: the coordinator's Ed25519 provenance key (which key signs, loading, signing, checking).
- `software`: package versions and the git commit of the code that ran.
- `cli`: `fedward verify` and `fedward sign`.

The sub-modules are imported by name (`from fedward.server.provenance.manifest import verify_run`); this file
imports none of them, so `server.checkpoint_store` can use `signing` while `manifest` uses the store.
"""
