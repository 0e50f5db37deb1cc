package ssfreceiver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync"
)

// Handler does what the receiver does with a verified SET. It returns nil
// when the SET is taken; an *Error refuses the SET for good (the
// transmitter should not send it again: ErrInvalidState for a verification
// event not asked for, ErrInvalidRequest for an event it cannot use); any
// other error asks for it again later.
type Handler func(ctx context.Context, set SET) error

// maxSET bounds a pushed SET's body.
const maxSET = 256 << 10

// PushHandler is a receiver's push endpoint (RFC 8935): an http.Handler to
// give the transmitter as a push stream's endpoint_url.
type PushHandler struct {
	verifier      *Verifier
	authorization string
	handle        Handler
	seen          seenSet
}

// NewPushHandler returns the push endpoint of a stream whose SETs v
// verifies. It requires the Authorization header authorization, which the
// receiver gave the transmitter as the stream's authorization_header
// (SSF 1.0 section 6.1.1); an empty one requires none, for an endpoint
// that authenticates the transmitter otherwise (mutual TLS in front of
// it). handle takes each SET once.
func NewPushHandler(v *Verifier, authorization string, handle Handler) *PushHandler {
	return &PushHandler{verifier: v, authorization: authorization, handle: handle}
}

func (h *PushHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a SET", http.StatusMethodNotAllowed)
		return
	}
	// RFC 8935 section 3: the recipient authenticates the transmitter,
	// here by the header it was given.
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(h.authorization)) != 1 {
		writeSETError(w, refuse(ErrAuthenticationFailed, "the Authorization header is not the stream's"))
		return
	}
	// RFC 8935 section 2.1: the body is one SET, application/secevent+jwt.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/secevent+jwt" {
		writeSETError(w, refuse(ErrInvalidRequest, "Content-Type %q is not application/secevent+jwt", mt))
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSET))
	if err != nil {
		writeSETError(w, refuse(ErrInvalidRequest, "body: %v", err))
		return
	}
	set, err := h.verifier.Verify(r.Context(), raw)
	if err == nil && !h.seen.has(set.JTI) {
		// Delivery is at least once: a jti seen already was taken, and is
		// acknowledged again without being handled twice.
		if err = h.handle(r.Context(), set); err == nil {
			h.seen.add(set.JTI)
		}
	}
	var refused *Error
	switch {
	case errors.As(err, &refused):
		writeSETError(w, refused)
	case err != nil:
		// Not the SET's fault: the transmitter retries it (RFC 8935
		// section 2.3 leaves other failures to their HTTP status).
		slog.ErrorContext(r.Context(), "ssf receiver: SET not taken", "err", err)
		http.Error(w, "try again later", http.StatusServiceUnavailable)
	default:
		// RFC 8935 section 2.2: 202 Accepted, no body.
		w.WriteHeader(http.StatusAccepted)
	}
}

// writeSETError answers a SET refused: 400 with the error as JSON (RFC
// 8935 section 2.3).
func writeSETError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(e)
}

// seenSet remembers the last maxSeen jtis taken, to drop redeliveries.
type seenSet struct {
	mu    sync.Mutex
	jtis  map[string]struct{}
	order []string
}

const maxSeen = 10000

func (s *seenSet) has(jti string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.jtis[jti]
	return ok
}

func (s *seenSet) add(jti string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jtis == nil {
		s.jtis = make(map[string]struct{})
	}
	if _, ok := s.jtis[jti]; ok {
		return
	}
	if len(s.order) == maxSeen {
		delete(s.jtis, s.order[0])
		s.order = s.order[1:]
	}
	s.jtis[jti] = struct{}{}
	s.order = append(s.order, jti)
}
