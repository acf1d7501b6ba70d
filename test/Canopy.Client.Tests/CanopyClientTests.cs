using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Canopy.Rpc;

namespace Canopy.Client.Tests;

public sealed class CanopyClientTests
{
    private static readonly CanopyClientOptions Fast = new()
    {
        ConnectTimeout = TimeSpan.FromSeconds(2),
        RequestTimeout = TimeSpan.FromSeconds(5),
        AttemptTimeout = TimeSpan.FromSeconds(2),
    };

    [Fact]
    public async Task Put_then_get_round_trips_and_missing_key_is_null()
    {
        await using var cluster = FakeCluster.Start(1);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);

        await client.PutAsync(Bytes.Of("k1"), Bytes.Of("hello"));
        Assert.Equal("hello", Bytes.Text(await client.GetAsync(Bytes.Of("k1"))));
        Assert.Null(await client.GetAsync(Bytes.Of("nope")));
        await client.DeleteAsync(Bytes.Of("k1"));
        Assert.Null(await client.GetAsync(Bytes.Of("k1")));
    }

    [Fact]
    public async Task Redirects_to_the_hinted_leaseholder_and_then_goes_there_directly()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((1, [], null, 2));
        cluster.Put("k", "v");

        // Server 1's lookup answer is stale: it says node 1 holds the lease.
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.RangeLookup
            ? new RpcResponse { Range = cluster.RangeOf(r.Key!) with { Leaseholder = 1, LeaseholderAddress = cluster[1].Address } }
            : null);

        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
        Assert.Equal(1, cluster[1].Calls(RpcMethods.Get));
        Assert.Equal(1, cluster[2].Calls(RpcMethods.Get));

        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
        Assert.Equal(1, cluster[1].Calls(RpcMethods.Get));
        Assert.Equal(2, cluster[2].Calls(RpcMethods.Get));
    }

    [Fact]
    public async Task A_hint_with_only_a_node_id_is_resolved_through_node_status()
    {
        await using var cluster = FakeCluster.Start(3);
        cluster.HintAddresses = false;
        cluster.SetRanges((1, [], null, 3));
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.RangeLookup
            ? new RpcResponse { Range = cluster.RangeOf(r.Key!) with { Leaseholder = 0, LeaseholderAddress = null } }
            : null);

        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        await client.PutAsync(Bytes.Of("k"), Bytes.Of("v3"));
        Assert.Equal("v3", cluster.Value("k"));
        Assert.Equal(1, cluster[3].Calls(RpcMethods.Put));
        Assert.True(cluster[1].Calls(RpcMethods.NodeStatus) >= 1);
        Assert.Contains(cluster[3].Address, client.KnownServers);
    }

    [Fact]
    public async Task Retries_after_unavailable_with_a_short_backoff()
    {
        await using var cluster = FakeCluster.Start(1);
        cluster.Put("k", "v");
        var refusals = 2;
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.Get && Interlocked.Decrement(ref refusals) >= 0
            ? RpcResponse.Fail(RpcErrorCode.Unavailable, "no lease yet")
            : null);

        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        var sw = Stopwatch.StartNew();
        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
        Assert.Equal(3, cluster[1].Calls(RpcMethods.Get));
        Assert.True(sw.ElapsedMilliseconds < 1000, $"took {sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public async Task Fails_over_when_the_leaseholder_server_goes_down()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((1, [], null, 1));
        cluster.Put("k", "v");
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address, cluster[2].Address], Fast);
        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));

        // Server 1 dies (its connections close, new ones are refused); the lease moves to node 2.
        await cluster[1].DisposeAsync();
        cluster.MoveLease(1, 2);

        var sw = Stopwatch.StartNew();
        await client.PutAsync(Bytes.Of("k"), Bytes.Of("after"));
        Assert.Equal("after", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
        Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public async Task Connects_when_the_first_address_refuses()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((1, [], null, 2));
        cluster.Put("k", "v");
        var dead = DeadAddress();
        await using var client = await CanopyClient.ConnectAsync([dead, cluster[2].Address], Fast);
        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
    }

    [Fact]
    public async Task Scan_crosses_ranges_in_order_and_stops_at_the_limit()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((1, [], Bytes.Of("m"), 1), (2, Bytes.Of("m"), null, 2));
        var letters = Enumerable.Range('a', 26).Select(c => ((char)c).ToString()).ToList();
        foreach (var l in letters)
        {
            cluster.Put(l, l.ToUpperInvariant());
        }

        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast with { ScanPageSize = 5 });

        var all = await client.ScanAsync([], null);
        Assert.Equal(letters, all.Select(r => Bytes.Text(r.Key)));
        Assert.Equal(letters.Select(l => l.ToUpperInvariant()), all.Select(r => Bytes.Text(r.Value)));
        Assert.True(cluster[1].Calls(RpcMethods.Scan) >= 1 && cluster[2].Calls(RpcMethods.Scan) >= 1);

        var limited = await client.ScanAsync(Bytes.Of("j"), null, limit: 7);
        Assert.Equal(["j", "k", "l", "m", "n", "o", "p"], limited.Select(r => Bytes.Text(r.Key)));

        var bounded = await client.ScanAsync(Bytes.Of("k"), Bytes.Of("o"));
        Assert.Equal(["k", "l", "m", "n"], bounded.Select(r => Bytes.Text(r.Key)));
    }

    [Fact]
    public async Task Scan_recovers_when_the_cached_ranges_are_stale()
    {
        await using var cluster = FakeCluster.Start(1);
        foreach (var k in new[] { "a", "f", "m", "x" })
        {
            cluster.Put(k, k);
        }

        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        Assert.Equal(4, (await client.ScanAsync([], null)).Count);

        // Split after the client cached one range: the server serves only its own range and says where it ends.
        cluster.SetRanges((1, [], Bytes.Of("g"), 1), (2, Bytes.Of("g"), null, 1));
        var rows = await client.ScanAsync([], null);
        Assert.Equal(["a", "f", "m", "x"], rows.Select(r => Bytes.Text(r.Key)));
    }

    [Fact]
    public async Task Ambiguous_is_surfaced_and_not_retried()
    {
        await using var cluster = FakeCluster.Start(1);
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.Put
            ? RpcResponse.Fail(RpcErrorCode.Ambiguous, "lost contact with the leader mid-commit")
            : null);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        var ex = await Assert.ThrowsAsync<CanopyAmbiguousException>(() => client.PutAsync(Bytes.Of("k"), Bytes.Of("v")));
        Assert.Contains("lost contact", ex.Message, StringComparison.Ordinal);
        Assert.Equal(1, cluster[1].Calls(RpcMethods.Put));
    }

    [Fact]
    public async Task Final_errors_are_thrown_at_once_with_their_code()
    {
        await using var cluster = FakeCluster.Start(1);
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.Get
            ? RpcResponse.Fail(RpcErrorCode.NotInitialized, "the cluster is not initialised (run canopy init)")
            : null);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        var ex = await Assert.ThrowsAsync<CanopyRpcException>(() => client.GetAsync(Bytes.Of("k")));
        Assert.Equal(RpcErrorCode.NotInitialized, ex.Code);
        Assert.Equal("the cluster is not initialised (run canopy init)", ex.Message);
        Assert.Equal(1, cluster[1].Calls(RpcMethods.Get));

        var init = await Assert.ThrowsAsync<CanopyRpcException>(() => client.InitAsync());
        Assert.Equal(RpcErrorCode.AlreadyInitialized, init.Code);
    }

    [Fact]
    public async Task Range_not_found_drops_the_cache_entry_and_retries()
    {
        await using var cluster = FakeCluster.Start(1);
        cluster.Put("k", "v");
        var once = 1;
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.Get && Interlocked.Exchange(ref once, 0) == 1
            ? RpcResponse.Fail(RpcErrorCode.RangeNotFound, "no replica of r1 here")
            : null);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        Assert.Equal("v", Bytes.Text(await client.GetAsync(Bytes.Of("k"))));
        Assert.Equal(2, cluster[1].Calls(RpcMethods.Get));
        Assert.True(cluster[1].Calls(RpcMethods.RangeLookup) >= 2);
    }

    [Fact]
    public async Task Unreachable_servers_give_one_line_naming_each()
    {
        var a = DeadAddress();
        var b = DeadAddress();
        var sw = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<CanopyUnavailableException>(() => CanopyClient.ConnectAsync([a], Fast));
        Assert.Equal($"cannot reach {a}: connection refused", ex.Message);

        ex = await Assert.ThrowsAsync<CanopyUnavailableException>(() => CanopyClient.ConnectAsync([a, b], Fast));
        Assert.Contains($"cannot reach {a}: connection refused", ex.Message, StringComparison.Ordinal);
        Assert.Contains($"cannot reach {b}: connection refused", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', ex.Message);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms");

        await Assert.ThrowsAsync<ArgumentException>(() => CanopyClient.ConnectAsync(["no-port"], Fast));
    }

    [Fact]
    public async Task The_deadline_ends_endless_retries_with_the_last_error()
    {
        await using var cluster = FakeCluster.Start(1);
        var endless = false;
        var once = 1;
        cluster[1].Intercept = r => Task.FromResult(r.Method == RpcMethods.Get && (Volatile.Read(ref endless) || Interlocked.Exchange(ref once, 0) == 1)
            ? RpcResponse.Fail(RpcErrorCode.Unavailable, "election running")
            : null);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast with { RequestTimeout = TimeSpan.FromMilliseconds(600) });

        // Warm-up (JIT, JSON metadata) so that the first attempt surely answers within the deadline.
        Assert.Null(await client.GetAsync(Bytes.Of("k")));

        Volatile.Write(ref endless, true);
        var before = cluster[1].Calls(RpcMethods.Get);
        var sw = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<CanopyUnavailableException>(() => client.GetAsync(Bytes.Of("k")));
        Assert.InRange(sw.ElapsedMilliseconds, 550, 2000);
        Assert.Contains("get did not complete within 600 ms", ex.Message, StringComparison.Ordinal);
        Assert.Contains("unavailable: election running", ex.Message, StringComparison.Ordinal);
        Assert.True(cluster[1].Calls(RpcMethods.Get) - before >= 3);
    }

    [Fact]
    public async Task The_deadline_ends_a_call_to_a_hung_server_and_cancellation_is_honoured()
    {
        await using var cluster = FakeCluster.Start(1);
        cluster[1].Intercept = async r =>
        {
            if (r.Method == RpcMethods.Get)
            {
                await Task.Delay(Timeout.Infinite);
            }

            return null;
        };
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast with { RequestTimeout = TimeSpan.FromMilliseconds(500) });
        var sw = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<CanopyUnavailableException>(() => client.GetAsync(Bytes.Of("k")));
        Assert.InRange(sw.ElapsedMilliseconds, 450, 2500);
        Assert.Contains($"no answer from {cluster[1].Address}", ex.Message, StringComparison.Ordinal);

        // The caller's token ends the call long before the (here long) deadline, as an OperationCanceledException.
        await using var patient = await CanopyClient.ConnectAsync([cluster[1].Address], Fast with { RequestTimeout = TimeSpan.FromSeconds(30), AttemptTimeout = TimeSpan.FromSeconds(30) });
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        sw.Restart();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => patient.GetAsync(Bytes.Of("k"), cts.Token));
        Assert.True(sw.ElapsedMilliseconds < 3000, $"took {sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public async Task Batch_must_stay_within_one_range()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((2, [], Bytes.Of("m"), 1), (3, Bytes.Of("m"), null, 2));
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);

        var ex = await Assert.ThrowsAsync<ArgumentException>(() => client.BatchAsync([new KvWrite(Bytes.Of("a"), Bytes.Of("1")), new KvWrite(Bytes.Of("z"), Bytes.Of("2"))]));
        Assert.Equal("batch spans ranges r2 and r3", ex.Message);
        Assert.Equal(0, cluster[1].Calls(RpcMethods.Batch) + cluster[2].Calls(RpcMethods.Batch));

        cluster.Put("y", "old");
        await client.BatchAsync([new KvWrite(Bytes.Of("n"), Bytes.Of("1")), new KvWrite(Bytes.Of("y"), null)]);
        Assert.Equal("1", cluster.Value("n"));
        Assert.Null(cluster.Value("y"));
        Assert.Equal(1, cluster[2].Calls(RpcMethods.Batch));
    }

    [Fact]
    public async Task Invalid_keys_are_refused_before_sending()
    {
        await using var cluster = FakeCluster.Start(1);
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetAsync([]));
        await Assert.ThrowsAsync<ArgumentException>(() => client.PutAsync([0, 1], [1]));
        await Assert.ThrowsAsync<ArgumentException>(() => client.DeleteAsync(new byte[4097]));
        Assert.Equal(0, cluster[1].Calls(RpcMethods.Get) + cluster[1].Calls(RpcMethods.Put) + cluster[1].Calls(RpcMethods.Delete));
    }

    [Fact]
    public async Task Many_concurrent_callers_across_two_leaseholders()
    {
        await using var cluster = FakeCluster.Start(2);
        cluster.SetRanges((1, [], Bytes.Of("k/5"), 1), (2, Bytes.Of("k/5"), null, 2));
        await using var client = await CanopyClient.ConnectAsync([cluster[1].Address], Fast);
        await Task.WhenAll(Enumerable.Range(0, 400).Select(async i =>
        {
            var key = Bytes.Of($"k/{i % 10}/{i}");
            await client.PutAsync(key, Bytes.Of($"v{i}"));
            Assert.Equal($"v{i}", Bytes.Text(await client.GetAsync(key)));
        }));
        Assert.Equal(2, client.CachedRanges.Count);
        var lists = await client.ListRangesAsync();
        Assert.Equal(2, lists.Count);
        var nodes = await client.NodeStatusAsync();
        Assert.Equal(2, nodes.Count);
    }

    /// <summary>An address nobody listens on (a port just released).</summary>
    private static string DeadAddress()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return $"127.0.0.1:{((IPEndPoint)s.LocalEndPoint!).Port}";
    }
}
