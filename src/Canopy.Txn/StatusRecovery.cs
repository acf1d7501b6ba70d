using Canopy.Rpc;

namespace Canopy.Txn;

/// <summary>
/// Status recovery of a STAGING record (txn-pitfalls 3), shared by pushers (replica side) and a coordinator settling
/// its own unclear commit: each listed write is found (an intent of the record's epoch at or below its timestamp) or,
/// with <c>prevent</c>, made impossible at or below that timestamp (its key's timestamp cache is raised) before it
/// counts as missing; then the decision (all found: commit, else abort) goes to the record, which applies it only if
/// the record is still what was examined. Whoever runs it learns the outcome from the record afterwards.
/// </summary>
public static class StatusRecovery
{
    /// <summary>
    /// Runs recovery of <paramref name="staged"/> (epoch and staging timestamp as the record says; its anchor routes the
    /// decision). <paramref name="send"/> must answer transport failures with an error, not throw. False when a range
    /// could not be reached (nothing was decided: try again later).
    /// </summary>
    public static async Task<bool> RunAsync(
        Func<RpcRequest, byte[], CancellationToken, Task<RpcResponse>> send, TxnMeta staged, IReadOnlyList<byte[]> inFlight, bool prevent, CancellationToken ct)
    {
        var allFound = true;
        foreach (var k in inFlight)
        {
            var q = await send(new RpcRequest { Method = RpcMethods.KvQueryIntent, Key = k, Txn = staged.ToDto(), Mode = prevent ? "prevent" : "query" }, k, ct);
            if (q.Error is not null)
            {
                return false;
            }

            if (!q.Found)
            {
                allFound = false;
                break; // one prevented write decides: abort
            }
        }

        var decided = await send(new RpcRequest { Method = RpcMethods.KvTxnRecover, Txn = staged.ToDto(), Mode = allFound ? "commit" : "abort" }, staged.Anchor, ct);
        return decided.Error is null;
    }
}
