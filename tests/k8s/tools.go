//go:build tools

// Package k8sstorage pins the packages whose own tests scripts/kube-storage-tests.sh
// runs (Kubernetes' storage tests), so go.mod/go.sum record them and their test
// dependencies at the release kube-tools.sh builds kube-apiserver from.
package k8sstorage

import (
	_ "k8s.io/apiserver/pkg/storage/cacher"
	_ "k8s.io/apiserver/pkg/storage/etcd3"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testserver"
	_ "k8s.io/apiserver/pkg/storage/testing"
)
