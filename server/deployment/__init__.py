"""Deployment: the federation's PKI and the coordinator's processes.

- `provision`: the federation folder (CA, SuperLink certificate, operator certificate, one kit per site)
  and the site-kit format (`load_site_kit`, which `fedward site` gets through `fedward/cli.py`, since
  `client` never imports `server`).
- `superlink`: starting `flower-superlink`, the `flwr` CLI home and its JSON answers, registering sites.
- `proxy`: the nginx in front of the SuperLink and the operator's TLS tunnel.
- `launch`: `fedward run` (submit a signed app with `flwr run`, judge the run by its status and summary).
- `cli`: `fedward provision`, `fedward coordinator start|register`, `fedward run`.

The sub-modules are imported by name (`from fedward.server.deployment.provision import provision`); this file
imports none of them, so `server.provenance.signing` can use `provision` without loading the rest.
"""
