package main

import (
	"flag"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/services/gateway"
)

// registerAuth adds etcd's auth flags to a command that runs a gateway.
func registerAuth(fs *flag.FlagSet) *gateway.AuthConfig {
	c := &gateway.AuthConfig{}
	fs.StringVar(&c.Token, "auth-token", "simple", "token type: simple, or jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG[,ttl=DURATION] (as etcd)")
	fs.DurationVar(&c.TokenTTL, "auth-token-ttl", auth.DefaultTokenTTL, "life of a simple token")
	fs.IntVar(&c.BcryptCost, "bcrypt-cost", 10, "bcrypt cost of stored password hashes (4 to 31)")
	return c
}
