package client

// CacheLen returns how many access tokens s caches, stale ones included.
func CacheLen(s *Source) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cache)
}
