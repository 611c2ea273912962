// Package clienttest holds what tests share to drive an rbd client queue:
// the host engine tests over the in-memory transport (internal/target) and
// the guest tests over RDMA (test/e2e) use the same helpers.
package clienttest

import (
	"context"
	"testing"
	"time"

	"rbd/internal/client"
	"rbd/internal/wire"
)

// Do runs one command on q and waits for it (30 s at most); for a READ it
// returns a copy of the data. For a WRITE, data is the payload (length is
// then ignored).
func Do(t testing.TB, q *client.Queue, op wire.Op, flags uint8, off uint64, data []byte, length int) ([]byte, wire.Status) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := q.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	defer s.Release()
	if op == wire.OpWrite {
		copy(s.Buf, data)
		length = len(data)
	}
	type res struct {
		st   wire.Status
		data []byte
	}
	ch := make(chan res, 1)
	err = s.Submit(op, flags, off, uint32(length), func(_ *client.Slot, c client.Completion) {
		d := append([]byte(nil), c.Data...)
		c.Release()
		ch <- res{c.Status, d}
	})
	if err != nil {
		t.Fatalf("Submit %s: %v", op, err)
	}
	select {
	case r := <-ch:
		return r.data, r.st
	case <-ctx.Done():
		t.Fatalf("%s at %d: no completion", op, off)
	}
	return nil, 0
}
