"""The Kubernetes target: the target (target), its manifests (render), stalls said in the API's words (stalls),
pods read into an observation (observe), and a function's call as a Secret (function).
"""
