vcl 4.1;
# Varnish as a live cache in front of mlcache-origin, for benches/compare.sh.
# @ORIGIN_HOST@ and @ORIGIN_PORT@ are filled in by the script.
#
# Varnish collapses concurrent misses on its waiting list by itself and, with
# streaming (beresp.do_stream, on by default), delivers while the fetch is
# still running. It uses one thread per delivering client: started with
# -p thread_pool_min=1000 (2 pools: 2,000 threads ready before the viewers
# come) and -p thread_pool_max=5000.

backend origin {
    .host = "@ORIGIN_HOST@";
    .port = "@ORIGIN_PORT@";
    # The origin holds a request until its chunk exists (at most 5 s).
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 10s;
}

sub vcl_backend_response {
    if (beresp.status == 200) {
        set beresp.ttl = 60s;
        set beresp.do_stream = true;
        return (deliver);
    }
    # "Not yet" (404, no-store) is never stored, and leaves no hit-for-miss
    # object behind: the builtin VCL would make one for 2 minutes and send
    # every viewer of that chunk to the origin.
    set beresp.ttl = 0s;
    set beresp.grace = 0s;
    set beresp.uncacheable = true;
    return (deliver);
}
