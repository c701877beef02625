"""Validates rendered Kubernetes manifests offline and fails on any object it has no schema for.

`kubernetes-validate --strict` validates the built-in kinds, but for an object it has no schema
for (any custom resource, such as cert-manager's Certificate) it only prints a warning and exits
0; it has no option to make that an error (see `kubernetes-validate --help`, and
`validate_resource` in its utils.py: SchemaNotFoundError is a WARN). This script uses its library
the same way (`strict=True`: no property the schema does not name) for every built-in kind, and
validates cert-manager objects against the schemas of cert-manager's own CRDs: the PyPI package
cloudcoil-models-cert-manager, generated from the cert-manager release's cert-manager.crds.yaml
(version pinned in scripts/host-setup.sh), made strict the same way; and Prometheus Operator
objects (ServiceMonitor, PodMonitor) against the schemas of its CRDs, the PyPI package
cloudcoil-models-prometheus-operator (generated the same way from the operator's CRDs). Any other
object without a schema is an error.

usage: python kube-validate.py -k KUBERNETES_VERSION [-k ...] FILE...  (the venv's python from
`make deps-helm`). One line per object and version; exit 1 when any object is invalid or has no
schema.
"""

import argparse
import importlib.metadata
import sys

import jsonschema
import kubernetes_validate.utils as kv


def strict(schema):
    """Forbids properties a schema node does not name, in every object node below it; and takes
    out the `null` pydantic allows beside every optional field (the CRDs have no nullable field:
    a null there in a rendered chart is a templating mistake), so errors name the real field."""
    if not isinstance(schema, dict):
        return schema
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
        del schema["anyOf"]
        schema.update(next(o for o in options if o != {"type": "null"}))
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            strict(sub)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            strict(sub)
    for key in ("items", "additionalProperties"):
        strict(schema.get(key))
    return schema


_crds = {}


CRDS = {
    ("cert-manager.io/v1", "Certificate"): "cloudcoil.models.cert_manager",
    ("cert-manager.io/v1", "CertificateRequest"): "cloudcoil.models.cert_manager",
    ("cert-manager.io/v1", "Issuer"): "cloudcoil.models.cert_manager",
    ("cert-manager.io/v1", "ClusterIssuer"): "cloudcoil.models.cert_manager",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "cloudcoil.models.prometheus_operator",
    ("monitoring.coreos.com/v1", "PodMonitor"): "cloudcoil.models.prometheus_operator",
}


def crd_schema(api, kind):
    """The strict JSON schema of a kind from its project's CRDs (cert-manager, the Prometheus
    Operator), with the package it came from; None for any other custom resource. The models are
    imported only when needed (about 1.5 s)."""
    package = CRDS.get((api, kind))
    if package is None:
        return None
    if kind not in _crds:
        import importlib

        v1 = importlib.import_module(package + ".v1")
        _crds[kind] = strict(getattr(v1, kind).model_json_schema(by_alias=True))
    return _crds[kind], package


def where(error):
    return ".".join(str(p) for p in error.path) or "(object)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = 0
    for filename in args.files:
        for obj in kv.resources_from_file(filename):
            for k8s in args.kubernetes_version:
                failed += check(obj, k8s)
    return 1 if failed else 0


def check(obj, k8s):
    """Prints one line per object (one per error when invalid); returns the number of errors."""
    api, kind = obj.get("apiVersion"), obj.get("kind")
    name = "%s/%s" % (kind, (obj.get("metadata") or {}).get("name"))
    try:
        version = kv.validate(obj, k8s, strict=True)
        print("ok   %s: Kubernetes %s schema (strict)" % (name, version))
        return 0
    except kv.ValidationError as e:
        print("FAIL %s: Kubernetes %s: %s: %s" % (name, e.version, where(e), e.message))
        return 1
    except kv.SchemaNotFoundError:
        pass
    found = crd_schema(api, kind)
    if found is None:
        print("FAIL %s: no schema for %s %s (no Kubernetes %s kind, no known CRD)" % (name, api, kind, k8s))
        return 1
    schema, package = found
    source = "CRD schema (%s %s)" % (package, importlib.metadata.version(package))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    for e in errors:
        print("FAIL %s: %s: %s: %s" % (name, source, where(e), e.message))
    if not errors:
        print("ok   %s: %s (strict)" % (name, source))
    return len(errors)


if __name__ == "__main__":
    sys.exit(main())
