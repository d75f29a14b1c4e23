"""The Kubernetes backend: training tasks as Jobs, model servers as Deployments."""
