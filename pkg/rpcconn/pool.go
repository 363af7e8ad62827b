package rpcconn

import (
	"sync"

	"google.golang.org/grpc"
)

// Pool keeps one client connection per address, dialled through its Peer
// on first use, so every caller in a process shares it.
type Pool struct {
	peer  Peer
	mu    sync.RWMutex
	conns map[string]*grpc.ClientConn
}

// NewPool returns an empty pool that dials through peer.
func NewPool(peer Peer) *Pool { return &Pool{peer: peer, conns: map[string]*grpc.ClientConn{}} }

// Conn returns the connection to addr, dialling it the first time.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.RLock()
	cc, ok := p.conns[addr]
	p.mu.RUnlock()
	if ok {
		return cc, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc, ok := p.conns[addr]; ok {
		return cc, nil
	}
	cc, err := p.peer.Dial(addr)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = cc
	return cc, nil
}

// Close closes every connection; the pool dials afresh if used again.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cc := range p.conns {
		cc.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
}
