#!/usr/bin/env python3
"""Validates rendered Kubernetes/Istio YAML against the real schemas.

Custom kinds: the openAPIV3Schema of the CRDs in ../shared/schemas/ (Istio v1.30.3 incl.
TrafficExtension, Gateway API, Envoy Gateway, InferencePool) and scripts/schemas/ (Envoy
Gateway's ClientTrafficPolicy and HTTPRouteFilter, from the same commit), made strict the way
`kubectl --validate=strict` is: an unknown field is an error unless the schema
says x-kubernetes-preserve-unknown-fields. Core kinds: kubernetes-validate --strict.

usage: validate_manifests.py [--schemas DIR]... FILE...   (multi-document YAML; exit 1 on any error)
"""
import argparse
import copy
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

ISTIO_GROUPS = {"networking.istio.io", "security.istio.io", "extensions.istio.io", "telemetry.istio.io"}


def strict(schema):
    """A copy of an OpenAPI v3 structural schema that refuses unknown properties."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def load_crds(schemas_dir):
    crds = {}
    for path in glob.glob(os.path.join(schemas_dir, "*.yaml")):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group = doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                for v in doc["spec"]["versions"]:
                    crds[(group, v["name"], kind)] = strict(v["schema"]["openAPIV3Schema"])
    return crds


def validate_istio(doc, crds):
    group, _, version = doc["apiVersion"].partition("/")
    schema = crds.get((group, version, doc["kind"]))
    if schema is None:
        return [f"no schema for {doc['apiVersion']} {doc['kind']} in the CRDs of {', '.join(sorted({g for g, _, _ in crds}))}"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = [f"{'/'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        errors.append("metadata.name is required")
    return errors


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--schemas", action="append",
                    help="a directory of CRDs (repeatable; default: ../shared/schemas and scripts/schemas)")
    ap.add_argument("--kubernetes-version", default="1.33.0")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    dirs = args.schemas or [os.path.join(here, "..", "..", "shared", "schemas"), os.path.join(here, "schemas")]
    crds = {}
    for d in dirs:
        if not os.path.isdir(d):
            print(f"error: CRD schemas not found in {d}", file=sys.stderr)
            return 1
        crds.update(load_crds(d))
    failed = 0
    count = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if doc.get("kind") in ("Kustomization", "Component"):
                continue
            count += 1
            what = f"{path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            group = doc.get("apiVersion", "").partition("/")[0] if "/" in doc.get("apiVersion", "") else ""
            version = doc.get("apiVersion", "").partition("/")[2]
            if group in ISTIO_GROUPS or (group, version, doc.get("kind")) in crds:
                errors = validate_istio(doc, crds)
            else:
                try:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                    errors = []
                except kubernetes_validate.ValidationError as e:
                    errors = [f"{'/'.join(str(p) for p in e.path) or '.'}: {e.message}"]
                except Exception as e:  # unknown kind or version
                    errors = [str(e)]
            if errors:
                failed += 1
                for e in errors:
                    print(f"INVALID {what}: {e}")
            else:
                print(f"ok {what}")
    print(f"{count - failed} valid, {failed} invalid")
    return 1 if failed or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
