// Package e2e holds rbd's end-to-end tests. They run inside the guest that
// test/vm/e2e.sh boots (make e2e), once over soft-RoCE and once over
// soft-iWARP, and skip elsewhere. The environment says which transport:
// RBD_TEST_TRANSPORT (rxe|siw), RBD_TEST_ADDR (the in-guest address the RDMA
// device serves), RBD_TEST_RDMA_DEV (rxe0|siw0) and RBD_TEST_BIN (the folder
// with rbdt, rbdi and rbdctl built on the host).
package e2e
