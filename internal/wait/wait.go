// Package wait bounds a wait for a sync.WaitGroup, for Close methods that
// must not hang on work blocked where it cannot be interrupted.
package wait

import (
	"sync"
	"time"
)

// Within waits up to d for wg to reach zero and reports whether it did. When
// it did not, a goroutine goes on waiting and ends when wg reaches zero.
func Within(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
