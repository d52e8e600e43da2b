#!/usr/bin/env bash
# cluster-e2e-etcd.sh — cluster-e2e.sh with the etcd registry.
BACKEND=etcd exec bash "$(dirname "$0")/cluster-e2e.sh"
