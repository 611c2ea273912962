//go:build linux && cgo

// This is the only file of the package that imports "C". It holds tiny C helpers
// (unions, macros and loops that would otherwise need many cgo calls) and thin Go
// wrappers named c*, which the pure-Go rest of the package calls. Handles to C
// objects travel as unsafe.Pointer. No function here blocks: the channel fds are
// non-blocking and their waiting happens on Go's netpoller (poll.go).

package verbs

/*
#cgo LDFLAGS: -libverbs -lrdmacm
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Mirrors of the Go structs SGE, SendWR, RecvWR and WC (layouts checked at init).
#define RBD_MAX_SGE 4
#define RBD_MAX_CHAIN 64
struct rbd_sge { uint64_t addr; uint32_t length; uint32_t lkey; };
struct rbd_send_wr {
	uint64_t id; uint64_t raddr; uint32_t rkey; uint32_t op; uint32_t flags; uint32_t nsge;
	struct rbd_sge sge[RBD_MAX_SGE];
};
struct rbd_recv_wr { uint64_t id; uint32_t nsge; uint32_t pad; struct rbd_sge sge[RBD_MAX_SGE]; };
struct rbd_wc {
	uint64_t id; uint32_t status; uint32_t opcode; uint32_t byte_len; uint32_t vendor_err;
	uint32_t qp_num; uint32_t flags;
};


// Opcodes and flags as the Go side numbers them (verbs.go).
static enum ibv_wr_opcode rbd_op(uint32_t op) {
	switch (op) {
	case 1: return IBV_WR_RDMA_WRITE;
	case 2: return IBV_WR_RDMA_READ;
	default: return IBV_WR_SEND;
	}
}
static unsigned rbd_flags(uint32_t f) {
	unsigned r = 0;
	if (f & 1) r |= IBV_SEND_SIGNALED;
	if (f & 2) r |= IBV_SEND_INLINE;
	if (f & 4) r |= IBV_SEND_FENCE;
	if (f & 8) r |= IBV_SEND_SOLICITED;
	return r;
}

// One ibv_post_send for a whole chain. Returns 0 or an errno; *bad is the index
// of the first work request that was not posted.
static int rbd_post_send(struct ibv_qp *qp, struct rbd_send_wr *w, int n, int *bad) {
	struct ibv_send_wr wr[RBD_MAX_CHAIN];
	struct ibv_sge sge[RBD_MAX_CHAIN * RBD_MAX_SGE];
	struct ibv_send_wr *badwr = NULL;
	int i, j, k = 0, rc;
	if (n <= 0 || n > RBD_MAX_CHAIN) return EINVAL;
	for (i = 0; i < n; i++) {
		memset(&wr[i], 0, sizeof wr[i]);
		wr[i].wr_id = w[i].id;
		wr[i].opcode = rbd_op(w[i].op);
		wr[i].send_flags = rbd_flags(w[i].flags);
		wr[i].wr.rdma.remote_addr = w[i].raddr;
		wr[i].wr.rdma.rkey = w[i].rkey;
		if (w[i].nsge > RBD_MAX_SGE) return EINVAL;
		wr[i].sg_list = &sge[k];
		wr[i].num_sge = w[i].nsge;
		for (j = 0; j < (int)w[i].nsge; j++, k++) {
			sge[k].addr = w[i].sge[j].addr;
			sge[k].length = w[i].sge[j].length;
			sge[k].lkey = w[i].sge[j].lkey;
		}
		wr[i].next = i + 1 < n ? &wr[i + 1] : NULL;
	}
	rc = ibv_post_send(qp, wr, &badwr);
	*bad = rc && badwr ? (int)(badwr - wr) : (rc ? 0 : n);
	return rc;
}

static int rbd_post_recv(struct ibv_qp *qp, struct rbd_recv_wr *w, int n, int *bad) {
	struct ibv_recv_wr wr[RBD_MAX_CHAIN];
	struct ibv_sge sge[RBD_MAX_CHAIN * RBD_MAX_SGE];
	struct ibv_recv_wr *badwr = NULL;
	int i, j, k = 0, rc;
	if (n <= 0 || n > RBD_MAX_CHAIN) return EINVAL;
	for (i = 0; i < n; i++) {
		memset(&wr[i], 0, sizeof wr[i]);
		wr[i].wr_id = w[i].id;
		if (w[i].nsge > RBD_MAX_SGE) return EINVAL;
		wr[i].sg_list = &sge[k];
		wr[i].num_sge = w[i].nsge;
		for (j = 0; j < (int)w[i].nsge; j++, k++) {
			sge[k].addr = w[i].sge[j].addr;
			sge[k].length = w[i].sge[j].length;
			sge[k].lkey = w[i].sge[j].lkey;
		}
		wr[i].next = i + 1 < n ? &wr[i + 1] : NULL;
	}
	rc = ibv_post_recv(qp, wr, &badwr);
	*bad = rc && badwr ? (int)(badwr - wr) : (rc ? 0 : n);
	return rc;
}

static int rbd_poll_cq(struct ibv_cq *cq, int n, struct rbd_wc *out) {
	struct ibv_wc wc[RBD_MAX_CHAIN];
	int i, got;
	if (n > RBD_MAX_CHAIN) n = RBD_MAX_CHAIN;
	got = ibv_poll_cq(cq, n, wc);
	for (i = 0; i < got; i++) {
		out[i].id = wc[i].wr_id;
		out[i].status = wc[i].status;
		out[i].opcode = wc[i].opcode;
		out[i].byte_len = wc[i].byte_len;
		out[i].vendor_err = wc[i].vendor_err;
		out[i].qp_num = wc[i].qp_num;
		out[i].flags = wc[i].wc_flags;
	}
	return got;
}

static struct ibv_mr *rbd_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access) {
	return ibv_reg_mr(pd, addr, len, access);
}

static int rbd_query_port(struct ibv_context *ctx, uint8_t port, struct ibv_port_attr *a) {
	return ibv_query_port(ctx, port, a);
}

static int rbd_set_nonblock(int fd) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0) return -1;
	return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int rbd_get_cq_event(struct ibv_comp_channel *ch, struct ibv_cq **cq) {
	void *ctx;
	return ibv_get_cq_event(ch, cq, &ctx);
}

// rdma_cm events, copied out and acknowledged at once, so that rdma_destroy_id
// never waits for an unacknowledged event.
#define RBD_PDATA_MAX 256
struct rbd_cm_event {
	int type;
	int status;
	struct rdma_cm_id *id;
	struct rdma_cm_id *listen_id;
	int pdata_len;
	uint8_t responder_resources;
	uint8_t initiator_depth;
	uint8_t retry_count;
	uint8_t rnr_retry_count;
	uint8_t pdata[RBD_PDATA_MAX];
};

static int rbd_get_cm_event(struct rdma_event_channel *ch, struct rbd_cm_event *out) {
	struct rdma_cm_event *ev;
	const void *pd = NULL;
	int len = 0;
	if (rdma_get_cm_event(ch, &ev)) return -1;
	memset(out, 0, sizeof *out);
	out->type = ev->event;
	out->status = ev->status;
	out->id = ev->id;
	out->listen_id = ev->listen_id;
	switch (ev->event) {
	case RDMA_CM_EVENT_CONNECT_REQUEST:
	case RDMA_CM_EVENT_CONNECT_RESPONSE:
	case RDMA_CM_EVENT_ESTABLISHED:
	case RDMA_CM_EVENT_REJECTED:
		pd = ev->param.conn.private_data;
		len = ev->param.conn.private_data_len;
		out->responder_resources = ev->param.conn.responder_resources;
		out->initiator_depth = ev->param.conn.initiator_depth;
		out->retry_count = ev->param.conn.retry_count;
		out->rnr_retry_count = ev->param.conn.rnr_retry_count;
		break;
	default:
		break;
	}
	if (pd && len > 0) {
		if (len > RBD_PDATA_MAX) len = RBD_PDATA_MAX;
		memcpy(out->pdata, pd, len);
		out->pdata_len = len;
	}
	rdma_ack_cm_event(ev);
	return 0;
}

static int rbd_conn(struct rdma_cm_id *id, int accept, const void *pd, int pdlen,
		uint8_t resp, uint8_t init, uint8_t retry, uint8_t rnr) {
	struct rdma_conn_param p;
	memset(&p, 0, sizeof p);
	p.private_data = pd;
	p.private_data_len = pdlen;
	p.responder_resources = resp;
	p.initiator_depth = init;
	p.retry_count = retry;
	p.rnr_retry_count = rnr;
	p.flow_control = 1;
	return accept ? rdma_accept(id, &p) : rdma_connect(id, &p);
}

static struct ibv_context *rbd_id_verbs(struct rdma_cm_id *id) { return id->verbs; }
static struct ibv_qp *rbd_id_qp(struct rdma_cm_id *id) { return id->qp; }
static int rbd_id_port(struct rdma_cm_id *id) { return id->port_num; }
static int rbd_id_event_fd(struct rdma_event_channel *ch) { return ch->fd; }
static int rbd_comp_fd(struct ibv_comp_channel *ch) { return ch->fd; }
static const char *rbd_dev_name(struct ibv_context *ctx) { return ibv_get_device_name(ctx->device); }
static int rbd_node_type(struct ibv_context *ctx) { return ctx->device->node_type; }
static int rbd_transport_type(struct ibv_context *ctx) { return ctx->device->transport_type; }
static struct sockaddr *rbd_local_addr(struct rdma_cm_id *id) { return rdma_get_local_addr(id); }
static struct sockaddr *rbd_peer_addr(struct rdma_cm_id *id) { return rdma_get_peer_addr(id); }
static int rbd_sa_family(struct sockaddr *sa) { return sa ? sa->sa_family : 0; }
*/
import "C"

import (
	"net/netip"
	"syscall"
	"unsafe"
)

const cgoAvailable = true

func init() {
	// The Go mirrors must match the C structs byte for byte.
	check := func(name string, goSize, cSize uintptr) {
		if goSize != cSize {
			panic("verbs: layout of " + name + " differs between Go and C")
		}
	}
	check("SGE", unsafe.Sizeof(SGE{}), C.sizeof_struct_rbd_sge)
	check("SendWR", unsafe.Sizeof(SendWR{}), C.sizeof_struct_rbd_send_wr)
	check("RecvWR", unsafe.Sizeof(RecvWR{}), C.sizeof_struct_rbd_recv_wr)
	check("WC", unsafe.Sizeof(WC{}), C.sizeof_struct_rbd_wc)
	if MaxSGE != C.RBD_MAX_SGE || MaxChain != C.RBD_MAX_CHAIN {
		panic("verbs: MaxSGE/MaxChain differ between Go and C")
	}
}

func errnoOf(ret C.int) syscall.Errno { return syscall.Errno(ret) }

// errnoFrom is the errno that cgo's two-value call form captured right
// after the C call, on the same thread (EIO when none was set).
func errnoFrom(err error) syscall.Errno {
	if e, ok := err.(syscall.Errno); ok && e != 0 {
		return e
	}
	return syscall.EIO
}

// ---- devices

func cDeviceNames() ([]string, error) {
	var n C.int
	list, errno := C.ibv_get_device_list(&n)
	if list == nil {
		return nil, newError("ibv_get_device_list", errnoFrom(errno))
	}
	defer C.ibv_free_device_list(list)
	devs := unsafe.Slice(list, int(n))
	names := make([]string, 0, len(devs))
	for _, d := range devs {
		names = append(names, C.GoString(C.ibv_get_device_name(d)))
	}
	return names, nil
}

func cOpenDevice(name string) (unsafe.Pointer, error) {
	var n C.int
	list, errno := C.ibv_get_device_list(&n)
	if list == nil {
		return nil, newError("ibv_get_device_list", errnoFrom(errno))
	}
	defer C.ibv_free_device_list(list)
	for _, d := range unsafe.Slice(list, int(n)) {
		if C.GoString(C.ibv_get_device_name(d)) == name {
			ctx, errno := C.ibv_open_device(d)
			if ctx == nil {
				return nil, newError("ibv_open_device", errnoFrom(errno))
			}
			return unsafe.Pointer(ctx), nil
		}
	}
	return nil, newError("ibv_open_device "+name, syscall.ENODEV)
}

func cCloseDevice(ctx unsafe.Pointer) error {
	if r, errno := C.ibv_close_device((*C.struct_ibv_context)(ctx)); r != 0 {
		return newError("ibv_close_device", errnoFrom(errno))
	}
	return nil
}

func cDeviceName(ctx unsafe.Pointer) string {
	return C.GoString(C.rbd_dev_name((*C.struct_ibv_context)(ctx)))
}

func cDeviceKind(ctx unsafe.Pointer) (node NodeType, transport Transport) {
	c := (*C.struct_ibv_context)(ctx)
	return NodeType(C.rbd_node_type(c)), Transport(C.rbd_transport_type(c))
}

func cQueryDevice(ctx unsafe.Pointer) (DeviceAttr, error) {
	var a C.struct_ibv_device_attr
	if r := C.ibv_query_device((*C.struct_ibv_context)(ctx), &a); r != 0 {
		return DeviceAttr{}, newError("ibv_query_device", errnoOf(r))
	}
	return DeviceAttr{
		FirmwareVersion:   C.GoString(&a.fw_ver[0]),
		NodeGUID:          uint64(a.node_guid),
		VendorID:          uint32(a.vendor_id),
		VendorPartID:      uint32(a.vendor_part_id),
		MaxMRSize:         uint64(a.max_mr_size),
		MaxQP:             int(a.max_qp),
		MaxQPWR:           int(a.max_qp_wr),
		MaxSGE:            int(a.max_sge),
		MaxCQ:             int(a.max_cq),
		MaxCQE:            int(a.max_cqe),
		MaxMR:             int(a.max_mr),
		MaxPD:             int(a.max_pd),
		MaxQPRdAtom:       int(a.max_qp_rd_atom),
		MaxQPInitRdAtom:   int(a.max_qp_init_rd_atom),
		PhysPortCount:     int(a.phys_port_cnt),
		MaxSRQ:            int(a.max_srq),
		PageSizeCapMask:   uint64(a.page_size_cap),
		DeviceCapFlags:    uint32(a.device_cap_flags),
		MaxResponderDepth: int(a.max_res_rd_atom),
	}, nil
}

func cQueryPort(ctx unsafe.Pointer, port int) (PortAttr, error) {
	var a C.struct_ibv_port_attr
	if r := C.rbd_query_port((*C.struct_ibv_context)(ctx), C.uint8_t(port), &a); r != 0 {
		return PortAttr{}, newError("ibv_query_port", errnoOf(r))
	}
	return PortAttr{
		Port:        port,
		State:       PortState(a.state),
		MaxMTU:      MTU(a.max_mtu),
		ActiveMTU:   MTU(a.active_mtu),
		GIDTableLen: int(a.gid_tbl_len),
		LinkLayer:   LinkLayer(a.link_layer),
		ActiveSpeed: uint8(a.active_speed),
		ActiveWidth: uint8(a.active_width),
		MaxMsgSize:  uint32(a.max_msg_sz),
	}, nil
}

func cQueryGID(ctx unsafe.Pointer, port, index int) ([16]byte, error) {
	var g C.union_ibv_gid
	var out [16]byte
	if r, errno := C.ibv_query_gid((*C.struct_ibv_context)(ctx), C.uint8_t(port), C.int(index), &g); r != 0 {
		return out, newError("ibv_query_gid", errnoFrom(errno))
	}
	copy(out[:], C.GoBytes(unsafe.Pointer(&g), 16))
	return out, nil
}

// ---- protection domains and memory regions

func cAllocPD(ctx unsafe.Pointer) (unsafe.Pointer, error) {
	pd, errno := C.ibv_alloc_pd((*C.struct_ibv_context)(ctx))
	if pd == nil {
		return nil, newError("ibv_alloc_pd", errnoFrom(errno))
	}
	return unsafe.Pointer(pd), nil
}

func cDeallocPD(pd unsafe.Pointer) error {
	if r := C.ibv_dealloc_pd((*C.struct_ibv_pd)(pd)); r != 0 {
		return newError("ibv_dealloc_pd", errnoOf(r))
	}
	return nil
}

func cRegMR(pd unsafe.Pointer, addr unsafe.Pointer, length int, access Access) (mr unsafe.Pointer, lkey, rkey uint32, err error) {
	m, errno := C.rbd_reg_mr((*C.struct_ibv_pd)(pd), addr, C.size_t(length), C.int(access))
	if m == nil {
		return nil, 0, 0, newError("ibv_reg_mr", errnoFrom(errno))
	}
	return unsafe.Pointer(m), uint32(m.lkey), uint32(m.rkey), nil
}

func cDeregMR(mr unsafe.Pointer) error {
	if r := C.ibv_dereg_mr((*C.struct_ibv_mr)(mr)); r != 0 {
		return newError("ibv_dereg_mr", errnoOf(r))
	}
	return nil
}

// ---- completion channels and queues

func cCreateCompChannel(ctx unsafe.Pointer) (unsafe.Pointer, int, error) {
	ch, errno := C.ibv_create_comp_channel((*C.struct_ibv_context)(ctx))
	if ch == nil {
		return nil, -1, newError("ibv_create_comp_channel", errnoFrom(errno))
	}
	fd := int(C.rbd_comp_fd(ch))
	if r, errno := C.rbd_set_nonblock(C.int(fd)); r != 0 {
		e := errnoFrom(errno)
		C.ibv_destroy_comp_channel(ch)
		return nil, -1, newError("fcntl O_NONBLOCK", e)
	}
	return unsafe.Pointer(ch), fd, nil
}

func cDestroyCompChannel(ch unsafe.Pointer) error {
	if r, errno := C.ibv_destroy_comp_channel((*C.struct_ibv_comp_channel)(ch)); r != 0 {
		return newError("ibv_destroy_comp_channel", errnoFrom(errno))
	}
	return nil
}

func cCreateCQ(ctx unsafe.Pointer, cqe int, ch unsafe.Pointer, vector int) (unsafe.Pointer, int, error) {
	cq, errno := C.ibv_create_cq((*C.struct_ibv_context)(ctx), C.int(cqe), nil, (*C.struct_ibv_comp_channel)(ch), C.int(vector))
	if cq == nil {
		return nil, 0, newError("ibv_create_cq", errnoFrom(errno))
	}
	return unsafe.Pointer(cq), int(cq.cqe), nil
}

func cDestroyCQ(cq unsafe.Pointer) error {
	if r := C.ibv_destroy_cq((*C.struct_ibv_cq)(cq)); r != 0 {
		return newError("ibv_destroy_cq", errnoOf(r))
	}
	return nil
}

func cReqNotifyCQ(cq unsafe.Pointer, solicitedOnly bool) error {
	s := C.int(0)
	if solicitedOnly {
		s = 1
	}
	if r := C.ibv_req_notify_cq((*C.struct_ibv_cq)(cq), s); r != 0 {
		return newError("ibv_req_notify_cq", errnoOf(r))
	}
	return nil
}

// cGetCQEvent takes one event from a non-blocking completion channel; it
// returns syscall.EAGAIN when there is none.
func cGetCQEvent(ch unsafe.Pointer) (unsafe.Pointer, error) {
	var cq *C.struct_ibv_cq
	if r, errno := C.rbd_get_cq_event((*C.struct_ibv_comp_channel)(ch), &cq); r != 0 {
		return nil, errnoFrom(errno)
	}
	return unsafe.Pointer(cq), nil
}

func cAckCQEvents(cq unsafe.Pointer, n int) {
	C.ibv_ack_cq_events((*C.struct_ibv_cq)(cq), C.uint(n))
}

func cPollCQ(cq unsafe.Pointer, wcs []WC) (int, error) {
	if len(wcs) == 0 {
		return 0, nil
	}
	n := C.rbd_poll_cq((*C.struct_ibv_cq)(cq), C.int(len(wcs)), (*C.struct_rbd_wc)(unsafe.Pointer(&wcs[0])))
	if n < 0 {
		return 0, newError("ibv_poll_cq", syscall.EIO)
	}
	return int(n), nil
}

// ---- queue pairs

func cCreateQP(id, pd, sendCQ, recvCQ unsafe.Pointer, c *QPCaps) (unsafe.Pointer, uint32, error) {
	var a C.struct_ibv_qp_init_attr
	a.send_cq = (*C.struct_ibv_cq)(sendCQ)
	a.recv_cq = (*C.struct_ibv_cq)(recvCQ)
	a.qp_type = C.IBV_QPT_RC
	a.sq_sig_all = 0
	a.cap.max_send_wr = C.uint32_t(c.MaxSendWR)
	a.cap.max_recv_wr = C.uint32_t(c.MaxRecvWR)
	a.cap.max_send_sge = C.uint32_t(c.MaxSendSGE)
	a.cap.max_recv_sge = C.uint32_t(c.MaxRecvSGE)
	a.cap.max_inline_data = C.uint32_t(c.MaxInlineData)
	if r, errno := C.rdma_create_qp((*C.struct_rdma_cm_id)(id), (*C.struct_ibv_pd)(pd), &a); r != 0 {
		return nil, 0, newError("rdma_create_qp", errnoFrom(errno))
	}
	c.MaxSendWR = int(a.cap.max_send_wr)
	c.MaxRecvWR = int(a.cap.max_recv_wr)
	c.MaxSendSGE = int(a.cap.max_send_sge)
	c.MaxRecvSGE = int(a.cap.max_recv_sge)
	c.MaxInlineData = int(a.cap.max_inline_data)
	qp := C.rbd_id_qp((*C.struct_rdma_cm_id)(id))
	return unsafe.Pointer(qp), uint32(qp.qp_num), nil
}

func cDestroyQP(id unsafe.Pointer) {
	C.rdma_destroy_qp((*C.struct_rdma_cm_id)(id))
}

func cPostSend(qp unsafe.Pointer, wrs []SendWR) (int, error) {
	var bad C.int
	r := C.rbd_post_send((*C.struct_ibv_qp)(qp), (*C.struct_rbd_send_wr)(unsafe.Pointer(&wrs[0])), C.int(len(wrs)), &bad)
	if r != 0 {
		return int(bad), newError("ibv_post_send", errnoOf(r))
	}
	return len(wrs), nil
}

func cPostRecv(qp unsafe.Pointer, wrs []RecvWR) (int, error) {
	var bad C.int
	r := C.rbd_post_recv((*C.struct_ibv_qp)(qp), (*C.struct_rbd_recv_wr)(unsafe.Pointer(&wrs[0])), C.int(len(wrs)), &bad)
	if r != 0 {
		return int(bad), newError("ibv_post_recv", errnoOf(r))
	}
	return len(wrs), nil
}

// ---- rdma_cm

func cCreateEventChannel() (unsafe.Pointer, int, error) {
	ch, errno := C.rdma_create_event_channel()
	if ch == nil {
		return nil, -1, newError("rdma_create_event_channel", errnoFrom(errno))
	}
	fd := int(C.rbd_id_event_fd(ch))
	if r, errno := C.rbd_set_nonblock(C.int(fd)); r != 0 {
		e := errnoFrom(errno)
		C.rdma_destroy_event_channel(ch)
		return nil, -1, newError("fcntl O_NONBLOCK", e)
	}
	return unsafe.Pointer(ch), fd, nil
}

func cDestroyEventChannel(ch unsafe.Pointer) {
	C.rdma_destroy_event_channel((*C.struct_rdma_event_channel)(ch))
}

func cCreateID(ch unsafe.Pointer) (unsafe.Pointer, error) {
	var id *C.struct_rdma_cm_id
	if r, errno := C.rdma_create_id((*C.struct_rdma_event_channel)(ch), &id, nil, C.RDMA_PS_TCP); r != 0 {
		return nil, newError("rdma_create_id", errnoFrom(errno))
	}
	return unsafe.Pointer(id), nil
}

func cDestroyID(id unsafe.Pointer) error {
	if r, errno := C.rdma_destroy_id((*C.struct_rdma_cm_id)(id)); r != 0 {
		return newError("rdma_destroy_id", errnoFrom(errno))
	}
	return nil
}

func cMigrateID(id, ch unsafe.Pointer) error {
	if r, errno := C.rdma_migrate_id((*C.struct_rdma_cm_id)(id), (*C.struct_rdma_event_channel)(ch)); r != 0 {
		return newError("rdma_migrate_id", errnoFrom(errno))
	}
	return nil
}

// sockaddr builds a C sockaddr for ap in C memory (freed by the caller).
func sockaddr(ap netip.AddrPort) (*C.struct_sockaddr, func()) {
	addr := ap.Addr()
	if addr.Is4() || addr.Is4In6() {
		sa := (*C.struct_sockaddr_in)(C.calloc(1, C.sizeof_struct_sockaddr_in))
		sa.sin_family = C.AF_INET
		sa.sin_port = C.in_port_t(htons(ap.Port()))
		b := addr.Unmap().As4()
		C.memcpy(unsafe.Pointer(&sa.sin_addr), unsafe.Pointer(&b[0]), 4)
		return (*C.struct_sockaddr)(unsafe.Pointer(sa)), func() { C.free(unsafe.Pointer(sa)) }
	}
	sa := (*C.struct_sockaddr_in6)(C.calloc(1, C.sizeof_struct_sockaddr_in6))
	sa.sin6_family = C.AF_INET6
	sa.sin6_port = C.in_port_t(htons(ap.Port()))
	b := addr.As16()
	C.memcpy(unsafe.Pointer(&sa.sin6_addr), unsafe.Pointer(&b[0]), 16)
	sa.sin6_scope_id = C.uint32_t(scopeID(addr))
	return (*C.struct_sockaddr)(unsafe.Pointer(sa)), func() { C.free(unsafe.Pointer(sa)) }
}

func goAddrPort(sa *C.struct_sockaddr) netip.AddrPort {
	switch C.rbd_sa_family(sa) {
	case C.AF_INET:
		in := (*C.struct_sockaddr_in)(unsafe.Pointer(sa))
		var b [4]byte
		C.memcpy(unsafe.Pointer(&b[0]), unsafe.Pointer(&in.sin_addr), 4)
		return netip.AddrPortFrom(netip.AddrFrom4(b), ntohs(uint16(in.sin_port)))
	case C.AF_INET6:
		in := (*C.struct_sockaddr_in6)(unsafe.Pointer(sa))
		var b [16]byte
		C.memcpy(unsafe.Pointer(&b[0]), unsafe.Pointer(&in.sin6_addr), 16)
		return netip.AddrPortFrom(netip.AddrFrom16(b), ntohs(uint16(in.sin6_port)))
	}
	return netip.AddrPort{}
}

func cBindAddr(id unsafe.Pointer, ap netip.AddrPort) error {
	sa, free := sockaddr(ap)
	defer free()
	if r, errno := C.rdma_bind_addr((*C.struct_rdma_cm_id)(id), sa); r != 0 {
		return newError("rdma_bind_addr", errnoFrom(errno))
	}
	return nil
}

func cListen(id unsafe.Pointer, backlog int) error {
	if r, errno := C.rdma_listen((*C.struct_rdma_cm_id)(id), C.int(backlog)); r != 0 {
		return newError("rdma_listen", errnoFrom(errno))
	}
	return nil
}

func cResolveAddr(id unsafe.Pointer, src, dst netip.AddrPort, timeoutMs int) error {
	var csrc *C.struct_sockaddr
	if src.IsValid() {
		s, free := sockaddr(src)
		defer free()
		csrc = s
	}
	d, free := sockaddr(dst)
	defer free()
	if r, errno := C.rdma_resolve_addr((*C.struct_rdma_cm_id)(id), csrc, d, C.int(timeoutMs)); r != 0 {
		return newError("rdma_resolve_addr", errnoFrom(errno))
	}
	return nil
}

func cResolveRoute(id unsafe.Pointer, timeoutMs int) error {
	if r, errno := C.rdma_resolve_route((*C.struct_rdma_cm_id)(id), C.int(timeoutMs)); r != 0 {
		return newError("rdma_resolve_route", errnoFrom(errno))
	}
	return nil
}

func cConnect(id unsafe.Pointer, accept bool, p *ConnParam) error {
	var pd unsafe.Pointer
	if len(p.PrivateData) > 0 {
		pd = C.CBytes(p.PrivateData)
		defer C.free(pd)
	}
	a, op := C.int(0), "rdma_connect"
	if accept {
		a, op = 1, "rdma_accept"
	}
	if r, errno := C.rbd_conn((*C.struct_rdma_cm_id)(id), a, pd, C.int(len(p.PrivateData)),
		C.uint8_t(p.ResponderResources), C.uint8_t(p.InitiatorDepth),
		C.uint8_t(p.RetryCount), C.uint8_t(p.RNRRetryCount)); r != 0 {
		return newError(op, errnoFrom(errno))
	}
	return nil
}

func cReject(id unsafe.Pointer, privateData []byte) error {
	var pd unsafe.Pointer
	if len(privateData) > 0 {
		pd = C.CBytes(privateData)
		defer C.free(pd)
	}
	if r, errno := C.rdma_reject((*C.struct_rdma_cm_id)(id), pd, C.uint8_t(len(privateData))); r != 0 {
		return newError("rdma_reject", errnoFrom(errno))
	}
	return nil
}

func cDisconnect(id unsafe.Pointer) error {
	if r, errno := C.rdma_disconnect((*C.struct_rdma_cm_id)(id)); r != 0 {
		return newError("rdma_disconnect", errnoFrom(errno))
	}
	return nil
}

func cIDVerbs(id unsafe.Pointer) unsafe.Pointer {
	return unsafe.Pointer(C.rbd_id_verbs((*C.struct_rdma_cm_id)(id)))
}

func cIDPort(id unsafe.Pointer) int { return int(C.rbd_id_port((*C.struct_rdma_cm_id)(id))) }

func cIDAddrs(id unsafe.Pointer) (local, peer netip.AddrPort) {
	c := (*C.struct_rdma_cm_id)(id)
	return goAddrPort(C.rbd_local_addr(c)), goAddrPort(C.rbd_peer_addr(c))
}

// cGetCMEvent takes one event from a non-blocking event channel (syscall.EAGAIN
// when there is none); the event is acknowledged before this returns.
func cGetCMEvent(ch unsafe.Pointer) (rawCMEvent, error) {
	var ev C.struct_rbd_cm_event
	if r, errno := C.rbd_get_cm_event((*C.struct_rdma_event_channel)(ch), &ev); r != 0 {
		return rawCMEvent{}, errnoFrom(errno)
	}
	r := rawCMEvent{
		Type:               CMEventType(ev._type),
		Status:             int(ev.status),
		id:                 unsafe.Pointer(ev.id),
		listenID:           unsafe.Pointer(ev.listen_id),
		ResponderResources: uint8(ev.responder_resources),
		InitiatorDepth:     uint8(ev.initiator_depth),
	}
	if ev.pdata_len > 0 {
		r.PrivateData = C.GoBytes(unsafe.Pointer(&ev.pdata[0]), ev.pdata_len)
	}
	return r, nil
}

func cEventString(t CMEventType) string {
	return C.GoString(C.rdma_event_str(C.enum_rdma_cm_event_type(t)))
}
