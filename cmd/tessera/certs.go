package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/tessera-kv/tessera/pkg/tlsconf"
)

// runCerts writes a CA and server, peer and client certificates signed by
// it, so a cluster can run over mutual TLS without openssl.
func runCerts(args []string) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "tessera-certs", "directory to write ca.crt, server.*, peer.* and client.* into")
	hosts := fs.String("hosts", "127.0.0.1,localhost", "comma-separated DNS names and IP addresses the server and peer certificates are valid for")
	cn := fs.String("client-cn", "root", "the client certificate's common name (with auth enabled, the etcd user it authenticates as)")
	validity := fs.Duration("validity", 365*24*time.Hour, "how long the certificates are valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	set, err := tlsconf.WriteSet(*dir, splitList(*hosts), *cn, *validity)
	if err != nil {
		return err
	}
	fmt.Printf("CA:     %s\nserver: %s %s\npeer:   %s %s\nclient: %s %s (CN %s)\n",
		set.CA, set.Server.Cert, set.Server.Key, set.Peer.Cert, set.Peer.Key, set.Client.Cert, set.Client.Key, *cn)
	fmt.Printf("\netcdctl flags: --cacert %s --cert %s --key %s\n", set.CA, set.Client.Cert, set.Client.Key)
	return nil
}
