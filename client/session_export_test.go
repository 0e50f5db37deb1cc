package client

import "net/http"

// SessionSource returns the Source s keeps for the session of cookie value
// v, nil if none.
func SessionSource(s *Sessions, v string) *Source {
	r := &http.Request{Header: http.Header{"Cookie": {s.cfg.CookieName + "=" + v}}}
	id, ok := s.sessionID(r)
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.sources[id]; ok {
		return el.Value.(*Source)
	}
	return nil
}

// SessionCount returns how many Sources s keeps.
func SessionCount(s *Sessions) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sources)
}
