// Package kubeapiserver runs a real kube-apiserver (built from
// k8s.io/kubernetes, pinned in this module) on "tessera dev" and drives it
// through its REST API with client-go. It is a module of its own, outside
// go.work, so that Kubernetes' dependency versions never reach the services.
package kubeapiserver
