//go:build tools

// This file pins the kube-apiserver command in the module's build list.
package kubeapiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
