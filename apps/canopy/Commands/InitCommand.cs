using System.CommandLine;
using Canopy.Client;
using Canopy.Rpc;

namespace Canopy.Cli.Commands;

/// <summary><c>canopy init --host H</c>: initialises a new cluster (once, after its servers started).</summary>
public static class InitCommand
{
    public static Command Build()
    {
        var host = ClusterCli.HostOption();
        var cmd = new Command("init", "Initialise a new cluster whose servers were started with --join (safe to repeat: an initialised cluster is left as it is).") { host };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            try
            {
                await client.InitAsync(ct);
            }
            catch (CanopyRpcException ex) when (ex.Code == RpcErrorCode.AlreadyInitialized)
            {
                // Idempotent for scripts: a retry after a lost answer (or a slow first attempt) must not fail forever.
                output.WriteLine(ex.Message.Length > 0 ? ex.Message : "the cluster is already initialised");
                return ExitCodes.Success;
            }

            output.WriteLine("cluster initialised");
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
