// Package k8s runs Kubernetes' own storage conformance tests
// (k8s.io/apiserver/pkg/storage/testing) against Tessera: an etcd3 store
// from k8s.io/apiserver on a clientv3 client connected to "tessera dev"
// started as a child process.
//
// Every test starts its own "tessera dev", as Kubernetes starts a fresh etcd
// per test.
//
// It is a module of its own, outside go.work, so that Kubernetes'
// dependency versions never reach the services.
package k8s
