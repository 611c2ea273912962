package nbd

import (
	"context"
	"time"
)

// Pending is the number of requests ReadRequest returned (NBD_CMD_DISC not
// counted) that have no reply queued yet. Each request takes exactly one
// Reply, ReplyV, QueueReply or QueueReplyV call.
func (c *Conn) Pending() int64 { return c.pending.Load() }

// Drain lets the requests read so far finish: it waits until each has its
// reply queued and every queued reply is written (or the connection failed),
// then closes the connection. A server calls it once its reader has stopped
// (after NBD_CMD_DISC, or once the read side was shut down), so that no
// request the client sent goes unanswered. When ctx ends first, Drain closes
// the connection anyway (the remaining replies are dropped, their done
// callbacks still run) and returns ctx's error.
func (c *Conn) Drain(ctx context.Context) error {
	t := time.NewTicker(500 * time.Microsecond)
	defer t.Stop()
	for !c.drained() {
		select {
		case <-ctx.Done():
			c.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
	return c.Close()
}

// drained reports whether nothing is left to answer or to write; replies
// queued without a wake-up (QueueReply) are handed to the writer goroutine.
func (c *Conn) drained() bool {
	if c.pending.Load() > 0 {
		return false
	}
	c.mu.Lock()
	if c.closed || c.werr != nil {
		c.mu.Unlock()
		return true
	}
	if len(c.queue) == 0 && !c.writing {
		c.mu.Unlock()
		return true
	}
	kick := len(c.queue) > 0 && !c.writing && !c.kicked
	if kick {
		c.kicked = true
	}
	c.mu.Unlock()
	if kick {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return false
}
