// Embedded mode (see embedded.hpp): master, RPC server, metadata server and storage node in one process.
#include "yutu/store/embedded.hpp"

#include <optional>
#include <stop_token>

#include <fmt/format.h>

#include "yutu/io/address.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/log.hpp"
#include "yutu/store/rpc_server.hpp"
#include "yutu/transfer/metadata_server.hpp"

namespace yutu::store {

namespace {

task<void> maintenance(master_state& st, std::chrono::milliseconds every) {
  for (;;) {
    auto r = co_await io::sleep_for(every);
    if (!r) co_return;
    st.tick();
  }
}

std::string host_port(const std::string& host, std::uint16_t port) {
  return host.find(':') != std::string::npos && host.front() != '[' ? fmt::format("[{}]:{}", host, port)
                                                                     : fmt::format("{}:{}", host, port);
}

}  // namespace

struct embedded::impl {
  embedded_config cfg;
  std::unique_ptr<master_state> master;
  std::optional<transfer::metadata_server> meta_srv;
  std::optional<rpc_server> rpc_srv;
  std::unique_ptr<io::reactor_pool> pool;
  std::stop_source stop;
  std::string metadata = "memory";
  std::string rpc_addr;
  std::unique_ptr<client> node;

  ~impl() {
    node.reset();  // unmounts while the master still serves
    stop.request_stop();
    if (meta_srv) meta_srv->stop();
    if (rpc_srv) rpc_srv->stop();
    if (pool) pool->stop_and_join();  // every serve() has returned
  }
};

embedded::embedded(std::unique_ptr<impl> p) noexcept : p_(std::move(p)) {}
embedded::~embedded() = default;

result<std::unique_ptr<embedded>> embedded::create(embedded_config cfg) {
  auto p = std::make_unique<impl>();
  p->cfg = std::move(cfg);
  auto& c = p->cfg;
  if (c.server_threads == 0) return fail(errc::invalid_params);
  try {
    p->master = std::make_unique<master_state>(c.master);
  } catch (const std::invalid_argument& e) {
    log::error("embedded store: bad master configuration: {}", e.what());
    return fail(errc::invalid_params);
  }
  if (c.serve_metadata) {
    auto at = io::address::parse(host_port(c.host, c.metadata_port));
    if (!at) return fail(errc::invalid_params);
    auto s = transfer::metadata_server::bind(*at);
    if (!s) return fail(s.error());
    p->meta_srv.emplace(std::move(*s));
    p->metadata = fmt::format("http://{}/metadata", p->meta_srv->local_address().to_string());
  }
  if (c.serve_rpc) {
    auto at = io::address::parse(host_port(c.host, c.rpc_port));
    if (!at) return fail(errc::invalid_params);
    auto s = rpc_server::bind(*at);
    if (!s) return fail(s.error());
    p->rpc_srv.emplace(std::move(*s));
    p->rpc_addr = p->rpc_srv->local_address().to_string();
  }
  p->pool = std::make_unique<io::reactor_pool>(c.server_threads);
  p->pool->spawn(0, maintenance(*p->master, c.master.maintenance_interval).with_stop_token(p->stop.get_token()));
  if (p->meta_srv) p->pool->spawn(0, p->meta_srv->serve().with_stop_token(std::stop_token{}));
  if (p->rpc_srv)
    p->pool->spawn(1 % c.server_threads, p->rpc_srv->serve(*p->master, *p->pool).with_stop_token(std::stop_token{}));

  if (c.memory) {
    client_config nc;
    nc.local_hostname = c.host;
    nc.metadata = p->metadata;
    nc.protocol = c.protocol;
    nc.global_segment_size = c.memory;
    nc.max_segment_size = c.max_segment_size;
    nc.hugepages = c.hugepages;
    auto n = client::create(nc, *p->master);
    if (!n) return fail(n.error());
    p->node = std::move(*n);
  }
  log::info("embedded store up: metadata {}, master rpc {}, {} bytes of memory", p->metadata,
            p->rpc_addr.empty() ? "(off)" : p->rpc_addr, c.memory);
  return std::unique_ptr<embedded>(new embedded(std::move(p)));
}

master_state& embedded::master() noexcept { return *p_->master; }
std::string embedded::master_address() const { return p_->rpc_addr; }
std::string embedded::metadata() const { return p_->metadata; }
client* embedded::node() noexcept { return p_->node.get(); }

result<std::unique_ptr<client>> embedded::connect(client_config cfg) {
  cfg.metadata = p_->metadata;
  return client::create(std::move(cfg), *p_->master);
}

}  // namespace yutu::store
