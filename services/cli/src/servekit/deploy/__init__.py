"""`servekit deploy`: ship the platform to Docker and Kubernetes.

Modules by role: `project` (the checkout and its git revision), `tools` (running
kubectl, docker compose and git with one-line errors), `images` (build contexts and
image builds through the Docker SDK), `manifests` (kustomize rendering and image
overrides), `cluster` (apply, diff and status through kubectl), `routes` (the
gateway's routing file), `rollout` (labels + routes, in a no-drop order) and
`compose` (docker compose up/down/config).
"""
