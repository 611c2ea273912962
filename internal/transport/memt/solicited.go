package memt

// SolicitedEvents: the in-memory transport honours Arm(true) (added to the
// transport.Endpoint interface after memt was started; see siw in rdma.go).
func (e *Endpoint) SolicitedEvents() bool { return true }
