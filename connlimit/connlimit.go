// Package connlimit caps the connections a listener holds open and refuses
// those past the cap at once.
//
// golang.org/x/net/netutil.LimitListener caps connections too, but past
// its cap it stops calling Accept: new connections then wait in the
// kernel's accept backlog, where the client cannot tell a slow server from
// a full one, and a request that waited there is served long after its
// client gave up. A refresh served that late is one whose retry is judged
// a replay. This Listener keeps accepting, and answers a connection past
// the cap with a short refusal and closes it, so the client fails fast and
// retries.
package connlimit

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Hooks observe a Listener; any of them may be nil.
type Hooks struct {
	Opened  func() // a connection was admitted
	Closed  func() // an admitted connection was closed
	Refused func() // a connection past the cap was refused
}

// refusalWriteTimeout bounds the write of a refusal, so a peer that does
// not read cannot hold Accept. The refusal is a few hundred bytes and a
// new socket's send buffer takes it at once.
const refusalWriteTimeout = 100 * time.Millisecond

// Listener admits at most a fixed number of open connections from the
// listener it wraps.
type Listener struct {
	net.Listener
	slots   chan struct{}
	refusal []byte
	hooks   Hooks
}

// New wraps inner so that at most max of its connections are open at once.
// A connection past the cap gets refusal (if not empty) and is closed.
// Wrap the plain listener, not a TLS one: servers look for *tls.Conn, which
// a wrapper would hide; refusal is then written in the clear, so leave it
// empty under TLS.
func New(inner net.Listener, max int, refusal []byte, hooks Hooks) *Listener {
	return &Listener{Listener: inner, slots: make(chan struct{}, max), refusal: refusal, hooks: hooks}
}

// Accept returns the next connection within the cap, refusing the ones
// past it as they come.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			call(l.hooks.Opened)
			return &conn{Conn: c, release: l.release}, nil
		default:
			l.refuse(c)
		}
	}
}

func (l *Listener) release() {
	<-l.slots
	call(l.hooks.Closed)
}

// refuse answers c and closes it at once: a refused connection must not
// hold a file descriptor, which is what the cap protects.
func (l *Listener) refuse(c net.Conn) {
	call(l.hooks.Refused)
	if len(l.refusal) > 0 {
		c.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
		c.Write(l.refusal)
	}
	c.Close()
}

func call(f func()) {
	if f != nil {
		f()
	}
}

// conn gives its slot back when closed, once however often it is closed.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite keeps the half-close net/http uses after an error response
// (it sends the response before the connection's reset would discard it).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
