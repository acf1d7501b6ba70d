// Subscriptions of the gateway (docs/protocol.md, "Subscriptions")
// ================================================================
//
// `subscribe` starts a TreeWatcher (src/Canopy.Tree/TreeWatch.cs) over this server's client of the cluster: a subtree
// (node ref) or regions, a snapshot answered as the request's result (or, with from_ts, a resume without snapshot),
// then one `sub_batch` message per consistent batch (at least every 200 ms: the watcher emits a heartbeat batch
// every 100 ms when only the resolved timestamp moves). Each subscription runs in its own task, outside the
// connection's in-flight slots (it lives as long as the subscription); its batches go through the connection's bounded
// outgoing queue. A subscription whose batch cannot be queued within SubscriberStall is ended with `sub_end`
// code too_slow (the client resumes from its last resolved timestamp): a slow reader costs the server a bounded queue,
// never an unbounded buffer, and never blocks the connection's answers for longer than that.
namespace Canopy.Gateway;

using System.Collections.Concurrent;
using Canopy.Client;
using Canopy.Tree;
using Canopy.Variant;

public sealed partial class WebSocketGateway
{
    /// <summary>Subscriptions per connection.</summary>
    public const int MaxSubscriptionsPerConnection = 16;

    /// <summary>How long a batch may wait for room in the outgoing queue before its subscription ends as too_slow.</summary>
    private static readonly TimeSpan SubscriberStall = TimeSpan.FromSeconds(5);

    private sealed partial class Connection
    {
        private readonly ConcurrentDictionary<long, CancellationTokenSource> _subs = new();
        private long _nextSub;

        private async Task SubscribeAsync(GodotVariant id, Fields f)
        {
            var treeName = f.String("tree", true);
            var node = f.String("node", false);
            var region = f.String("region", false);
            var regionsRaw = f.Raw("regions");
            var fromText = f.String("from_ts", false);
            if (f.Problem is not null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"subscribe: {f.Problem}"));
                return;
            }

            var regions = new List<string>();
            if (region is not null)
            {
                regions.Add(region);
            }

            if (regionsRaw is VariantArray arr)
            {
                foreach (var r in arr.Items)
                {
                    if (r is VariantString rs)
                    {
                        regions.Add(rs.Value);
                    }
                    else if (r is VariantStringName rsn)
                    {
                        regions.Add(rsn.Value);
                    }
                    else
                    {
                        await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, "subscribe: 'regions' holds Strings"));
                        return;
                    }
                }
            }
            else if (regionsRaw is not null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, "subscribe: 'regions' must be an Array of Strings"));
                return;
            }

            if (regions.Count > 0 && node is not null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, "subscribe: give either 'node' (a subtree) or 'region'/'regions', not both"));
                return;
            }

            CanopyTimestamp? from = null;
            if (fromText is not null)
            {
                if (!CanopyTimestamp.TryParse(fromText, out var ft) || ft == CanopyTimestamp.Zero)
                {
                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"subscribe: 'from_ts' is a timestamp \"wall.logical\", not '{fromText}'"));
                    return;
                }

                from = ft;
            }

            SceneTree tree;
            TreeInterest? interest = null;
            try
            {
                tree = new SceneTree(treeName!, _g._treeRunner);
                if (regions.Count > 0)
                {
                    interest = TreeInterest.OfRegions([.. regions]);
                }
            }
            catch (Exception e) when (e is ArgumentException or TreeException)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"subscribe: {e.Message}"));
                return;
            }

            if (_g._watchClient is null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.Unavailable, "subscriptions are not available on this server"));
                return;
            }

            if (_subs.Count >= MaxSubscriptionsPerConnection)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.RateLimited, $"at most {MaxSubscriptionsPerConnection} subscriptions per connection; unsubscribe one first"));
                return;
            }

            var sub = Interlocked.Increment(ref _nextSub);
            var cts = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token, _g._stopping);
            _subs[sub] = cts;
            _ = Task.Run(() => RunSubscriptionAsync(id, sub, tree, interest, node ?? "/", from, cts));
        }

        private async Task RunSubscriptionAsync(GodotVariant id, long sub, SceneTree tree, TreeInterest? interest, string node, CanopyTimestamp? from, CancellationTokenSource cts)
        {
            var answered = false;
            var resolved = from ?? CanopyTimestamp.Zero;
            try
            {
                if (interest is null)
                {
                    var root = node is "/" or "" ? SceneTree.Root : await ResolveNodeAsync(tree, node, cts.Token);
                    interest = TreeInterest.OfSubtree(root);
                }

                var client = await _g._watchClient!(cts.Token);
                var watcher = new TreeWatcher(client, tree.Keys);
                if (from is { } f)
                {
                    await SendAsync(GatewayProtocol.Result(id, ("sub", sub), ("ts", f.ToString())));
                    answered = true;
                }

                await foreach (var batch in watcher.WatchAsync(interest, from, null, cts.Token))
                {
                    if (batch.IsSnapshot)
                    {
                        var nodes = batch.Events.Select(e => (GodotVariant)GatewayTreeOps.RecordToVariant(e.Record!, e.Properties.Select(p => KeyValuePair.Create(p.Key, p.Value!)), _g._decodeOptions));
                        await SendAsync(GatewayProtocol.Result(id, ("sub", sub), ("ts", batch.Resolved.ToString()), ("nodes", new VariantArray(nodes))));
                        answered = true;
                        resolved = batch.Resolved;
                        continue;
                    }

                    var message = new VariantDictionary(
                        ("op", "sub_batch"),
                        ("sub", sub),
                        ("resolved", batch.Resolved.ToString()),
                        ("events", new VariantArray(batch.Events.Select(e => (GodotVariant)EventToVariant(e)))));
                    if (!await TrySendSubscriptionAsync(message, cts.Token))
                    {
                        await EndSubscriptionAsync(sub, "too_slow", $"the client did not read its batches for {SubscriberStall.TotalSeconds:0} s; resume with from_ts", resolved);
                        return;
                    }

                    resolved = batch.Resolved;
                }
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                // unsubscribed, or the connection or server is ending
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                var (code, text) = e switch
                {
                    GatewayTreeOps.PathNotFoundException p => (GatewayProtocol.Codes.NotFound, $"no node at path '{p.Path}'"),
                    CanopyRpcException r => (GatewayProtocol.CodeOf(r.Code), r.Message),
                    CanopyUnavailableException u => (GatewayProtocol.Codes.Unavailable, u.Message),
                    ArgumentException or TreeException => (GatewayProtocol.Codes.BadRequest, e.Message),
                    _ => (GatewayProtocol.Codes.Internal, e.Message),
                };
                if (!answered)
                {
                    await SendAsync(GatewayProtocol.Error(id, code, $"subscribe: {text}"));
                    _subs.TryRemove(sub, out _);
                }
                else
                {
                    await EndSubscriptionAsync(sub, code, text, resolved);
                }
            }
            finally
            {
                if (_subs.TryRemove(sub, out var mine))
                {
                    mine.Dispose();
                }
            }
        }

        private async Task<Guid> ResolveNodeAsync(SceneTree tree, string node, CancellationToken ct)
        {
            if (Guid.TryParse(node, out var uuid))
            {
                return uuid;
            }

            var r = await tree.RunAsync(t => GatewayTreeOps.ResolveAsync(t, node), ct);
            return r.Value;
        }

        /// <summary>Queues a batch, waiting at most <see cref="SubscriberStall"/> for room; false: the client is too slow.</summary>
        private async Task<bool> TrySendSubscriptionAsync(VariantDictionary message, CancellationToken ct)
        {
            var frame = Encode(message);
            if (_out.Writer.TryWrite(frame))
            {
                return true;
            }

            using var t = CancellationTokenSource.CreateLinkedTokenSource(ct);
            t.CancelAfter(SubscriberStall);
            try
            {
                await _out.Writer.WriteAsync(frame, t.Token);
                return true;
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return false;
            }
            catch (System.Threading.Channels.ChannelClosedException)
            {
                return true; // closing: dropped with the connection
            }
        }

        private async Task EndSubscriptionAsync(long sub, string code, string message, CanopyTimestamp resolved)
        {
            if (_subs.TryRemove(sub, out var cts))
            {
                await cts.CancelAsync();
                cts.Dispose();
            }

            await SendAsync(new VariantDictionary(("op", "sub_end"), ("sub", sub), ("code", code), ("message", message), ("resolved", resolved.ToString())));
        }

        private async Task UnsubscribeAsync(GodotVariant id, Fields f)
        {
            var sub = f.Int("sub", true);
            if (f.Problem is not null || sub is null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"unsubscribe: {f.Problem ?? "'sub' is required"}"));
                return;
            }

            if (!_subs.TryRemove(sub.Value, out var cts))
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, $"no subscription {sub} on this connection"));
                return;
            }

            await cts.CancelAsync();
            cts.Dispose();
            await SendAsync(GatewayProtocol.Result(id));
        }

        private void EndSubscriptions()
        {
            foreach (var id in _subs.Keys.ToList())
            {
                if (_subs.TryRemove(id, out var cts))
                {
                    cts.Cancel();
                    cts.Dispose();
                }
            }
        }

        private VariantDictionary EventToVariant(TreeEvent e)
        {
            var entries = new List<(GodotVariant, GodotVariant)>
            {
                ("event", e.Kind switch { TreeEventKind.Enter => "enter", TreeEventKind.Update => "update", _ => "leave" }),
                ("ts", e.Timestamp.ToString()),
                ("node", e.Node.ToString()),
            };
            if (e.Record is { } r)
            {
                entries.Add(("parent", r.Parent.ToString()));
                entries.Add(("name", r.Name));
                entries.Add(("type", r.Type));
                entries.Add(("kind", r.Kind == NodeKind.Scene ? "scene" : "class"));
                entries.Add(("owner", r.Owner is null ? GodotVariant.Nil : r.Owner));
                entries.Add(("region", r.Placement.Region is null ? GodotVariant.Nil : r.Placement.Region));
            }

            if (e.Kind == TreeEventKind.Enter || e.Properties.Count > 0)
            {
                entries.Add(("props", new VariantDictionary(e.Properties
                    .OrderBy(p => p.Key, StringComparer.Ordinal)
                    .Select(p => new KeyValuePair<GodotVariant, GodotVariant>(p.Key, p.Value is null ? GodotVariant.Nil : GatewayTreeOps.PropValue(p.Value, _g._decodeOptions))))));
            }

            return new VariantDictionary(entries.Select(x => KeyValuePair.Create(x.Item1, x.Item2)));
        }
    }
}
