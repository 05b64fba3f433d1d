import Foundation
import Testing

/// Unmodified C programs written for /dev/kvm, run on the host's /dev/kvm
/// and on SoftKVM through `swiftkvm exec` (the preload library): their
/// outputs must agree line for line.
@Suite(.enabled(if: HostKVM.isAvailable))
struct PreloadConformanceTests {
    /// Programs of requests that need no KVM_RUN: system requests and
    /// capabilities, memory slots, vCPU creation, dirty log, irqfd and
    /// ioeventfd, the coalesced ring in the vCPU mapping, bad pointers,
    /// threads and a forked child, /dev/kvm opened in a constructor.
    @Test(arguments: ["system", "memslots", "vcpus", "dirtylog", "eventfds", "coalesced", "devices", "badpointer", "threads", "constructor"])
    func programPrintsTheSameUnderExecAsOnHostKVM(name: String) throws {
        let program = try CPrograms.build(name)
        let host = try CPrograms.runOnHost(program)
        try #require(host.status == 0, "the program failed on the host: \(host)")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.lines == host.lines)
        #expect(soft.status == host.status)
    }

    /// With _FILE_OFFSET_BITS=64 a program calls open64, mmap64 and fcntl64:
    /// the large-file entries are interposed too.
    @Test func largeFileProgramPrintsTheSameUnderExecAsOnHostKVM() throws {
        let program = try CPrograms.build("vcpus", flags: ["-D_FILE_OFFSET_BITS=64"])
        let symbols = try CPrograms.run("/usr/bin/nm", ["-u", program.path]).lines.joined(separator: "\n")
        #expect(symbols.contains("open64") && symbols.contains("mmap64") && symbols.contains("fcntl64"))
        let host = try CPrograms.runOnHost(program)
        try #require(host.status == 0, "the program failed on the host: \(host)")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.lines == host.lines)
    }

    /// Guests in real, protected and long mode doing port I/O and MMIO, and
    /// one whose MSR accesses exit to user space or meet an MSR filter.
    @Test(arguments: ["realmode", "protmode", "longmode", "msrexits"])
    func guestExitsAreTheSameUnderExecAsOnHostKVM(name: String) throws {
        let program = try CPrograms.build(name)
        let host = try CPrograms.runOnHost(program)
        try #require(host.status == 0 && host.lines.contains("done"), "the guest did not finish on the host: \(host)")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.lines == host.lines)
        #expect(soft.status == host.status)
    }

    /// KVM_SET_GUEST_DEBUG's control bits, a #DB queued twice, a real-mode
    /// guest single-stepped through INT and IRET and stopped by a hardware
    /// breakpoint, and KVM_TRANSLATE.
    @Test func guestDebugControlIsAnsweredAsOnHostKVM() throws {
        let program = try CPrograms.build("guestdebug")
        let host = try CPrograms.runOnHost(program)
        try #require(host.status == 0, "the program failed on the host: \(host)")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.lines == host.lines)
        #expect(soft.status == host.status)
    }
}

/// What the preload library does on its own, with no host to compare.
struct PreloadTests {
    /// The comparisons above would pass on their own if the library were
    /// not loaded at all: this one sees SoftKVM answer.
    @Test func programUnderExecIsServedBySoftKVM() throws {
        let program = try CPrograms.build("vendor")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.status == 0)
        #expect(soft.lines == ["vendor SoftKVMSwift"])
    }

    @Test func badPointersGiveEFAULTUnderExecWithoutCrashing() throws {
        let program = try CPrograms.build("badpointer")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.status == 0)
        let results = soft.lines.filter { $0.hasPrefix("ioctl(") }
        #expect(results.count == 14)
        #expect(results.allSatisfy { $0.hasSuffix(": -1 EFAULT") }, "\(soft)")
        #expect(soft.lines.last == "still running")
    }

    @Test func programWithoutKVMRunsUnchangedUnderExec() throws {
        let program = try CPrograms.build("plainio")
        let direct = try CPrograms.runOnHost(program, ["7"])
        let soft = try CPrograms.runOnSoftKVM(program, ["7"])
        #expect(direct.status == 7)
        #expect(soft == direct)
        #expect(soft.lines.contains("mapped: hello"))
    }

    @Test func execPassesTheExitStatusThrough() throws {
        #expect(try CPrograms.runOnSoftKVM(URL(fileURLWithPath: "/bin/true")).status == 0)
        #expect(try CPrograms.runOnSoftKVM(URL(fileURLWithPath: "/bin/false")).status == 1)
        let shell = try CPrograms.runOnSoftKVM(URL(fileURLWithPath: "/bin/sh"), ["-c", "echo $LD_PRELOAD; exit 42"])
        #expect(shell.status == 42)
        #expect(shell.lines == [CPrograms.library.path])
        // A bare name is looked up in PATH, as a shell would.
        #expect(try CPrograms.run(CPrograms.swiftkvm.path, ["exec", "--", "false"]).status == 1)
    }

    @Test func execOfAMissingProgramExitsWith127() throws {
        let missing = try CPrograms.runOnSoftKVM(URL(fileURLWithPath: "/nonexistent/program"))
        #expect(missing.status == 127)
    }

    @Test func vcpuMappingIsSharedWithSoftKVMUnderExec() throws {
        // The vcpus program sets immediate_exit through its mapping and sees
        // KVM_RUN return EINTR: SoftKVM read the byte the program wrote.
        let program = try CPrograms.build("vcpus")
        let soft = try CPrograms.runOnSoftKVM(program)
        #expect(soft.lines.contains("ioctl(vcpu, KVM_RUN, 0): -1 EINTR"))
        #expect(soft.lines.contains("mmap of the vCPU: ok"))
    }
}
