package verbs

import "sync"

// lifetime guards a C object against use after free: calls into C hold it
// shared, Close holds it exclusively, so Close waits for calls in progress and
// later calls fail with ErrClosed (the model of internal/poll's fdMutex).
type lifetime struct {
	mu     sync.RWMutex
	closed bool
}

// acquire reports whether the object is open; if so the caller must release.
func (l *lifetime) acquire() bool {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return false
	}
	return true
}

func (l *lifetime) release() { l.mu.RUnlock() }

// close marks the object closed, waiting for calls in progress. It reports
// whether this call closed it (false: it was closed before). The caller frees
// the C object and then calls unlock.
func (l *lifetime) close() bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.closed = true
	return true
}

func (l *lifetime) unlock() { l.mu.Unlock() }

func (l *lifetime) isClosed() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.closed
}
