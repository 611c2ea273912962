package initiator

import "rbd/internal/nbd"

// ServeAsKernel serves conn as a kernel NBD socket of d's queue i would be
// served (resent writes ordered after their first copy; replies written at
// the queue's batch end), until it ends.
func ServeAsKernel(d *Device, conn *nbd.Conn, i int) {
	q := d.sess.Queues()[i]
	q.SetBatchEnd(conn.Flush)
	d.serve(conn, q, true)
}

// KernelTag is kernelTag.
var KernelTag = kernelTag
