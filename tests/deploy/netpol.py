"""NetworkPolicy semantics, for tests on rendered manifests: whether a pod may open a TCP
connection to another pod's port, as the Kubernetes API documents it (ingress only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]

    @property
    def namespace_labels(self) -> dict[str, str]:
        # Every namespace carries its name as this label (Kubernetes 1.21 and later).
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector: matchLabels and matchExpressions (an empty one selects all)."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], source: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pods are not addressed by IP blocks here
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:  # pods of the policy's own namespace
        return source.namespace == policy_namespace and selects(pods, source.labels)
    in_namespace = selects(namespaces, source.namespace_labels)
    return in_namespace and (pods is None or selects(pods, source.labels))


def _port_matches(ports: list[dict[str, Any]] | None, port: int) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in entry:
            return True
        low = entry["port"]
        if isinstance(low, int) and low <= port <= entry.get("endPort", low):
            return True
    return False


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether `source` may connect to `target` on `port`: allowed when no policy isolates the
    target for ingress, else when some rule of a policy selecting it admits the connection."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and selects(p["spec"]["podSelector"], target.labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers and not any(
                _peer_matches(peer, source, policy["metadata"]["namespace"]) for peer in peers
            ):
                continue
            if _port_matches(rule.get("ports"), port):
                return True
    return False
