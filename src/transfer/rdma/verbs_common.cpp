// Small helpers of the verbs vocabulary, and make_ibverbs() for builds without rdma-core.
#include "yutu/transfer/rdma/verbs.hpp"
#include "yutu_config.hpp"

namespace yutu::transfer::rdma {

std::uint32_t mtu_bytes(mtu m) noexcept { return 128u << static_cast<unsigned>(m); }

const char* to_string(wc_status s) noexcept {
  switch (s) {
    case wc_status::success: return "success";
    case wc_status::loc_len_err: return "local length error";
    case wc_status::loc_qp_op_err: return "local QP operation error";
    case wc_status::loc_prot_err: return "local protection error";
    case wc_status::wr_flush_err: return "flushed";
    case wc_status::rem_access_err: return "remote access error";
    case wc_status::rem_op_err: return "remote operation error";
    case wc_status::retry_exc_err: return "transport retry counter exceeded";
    case wc_status::rnr_retry_exc_err: return "RNR retry counter exceeded";
    case wc_status::fatal_err: return "fatal error";
    case wc_status::resp_timeout_err: return "response timeout";
    case wc_status::general_err: return "general error";
  }
  return "other work completion error";
}

#if !YUTU_HAS_RDMA
result<std::shared_ptr<verbs>> make_ibverbs() { return fail(te_errc::device_not_found); }
#endif

}  // namespace yutu::transfer::rdma
