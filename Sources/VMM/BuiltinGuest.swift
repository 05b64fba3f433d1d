import GuestMemory
import KVM

/// SwiftKVM's built-in guest, what `swiftkvm run` boots with no arguments: a
/// flat binary (guests/builtin/builtin.S) that goes from real mode through
/// protected mode to long mode, printing a line in each over the serial
/// port, prints the Adler-32 of its own image, and writes its status to the
/// debug-exit port.
///
/// The machine: 2 MiB of RAM at 0 holding the image at `loadAddress`, and a
/// page at the top of the 4 GiB space whose reset vector (0xfffffff0) is a
/// far jump to 0000:8000. The vCPU starts from its reset state (CS base
/// 0xffff0000, IP 0xfff0), as a real CPU does, so no register is set
/// before the first KVM_RUN; its CPUID is the accelerator's supported set.
///
/// Devices, all answered in the run loop: a 16550 at `serialPort` whose
/// transmit register collects output and whose LSR always reads "transmitter
/// empty" (0x60); the debug-exit port, as QEMU's isa-debug-exit but with the
/// status the byte written; every other port reads 0xff and ignores writes.
public final class BuiltinGuest {
    /// Where the image is loaded; the reset vector jumps here in real mode (0000:8000).
    public static let loadAddress: UInt64 = 0x8000
    /// RAM at guest-physical 0: the 2 MiB the guest identity-maps with one large page.
    public static let memorySize = 2 << 20
    /// The page holding the reset vector, the last of the 32-bit space.
    public static let resetPageAddress: UInt64 = 0xffff_f000
    /// The 16550's base port (COM1); output is what the guest writes to its transmit register.
    public static let serialPort: UInt16 = 0x3f8
    /// The port whose byte, written by the guest, ends the run with that status.
    public static let debugExitPort: UInt16 = 0x501
    /// The status the guest writes after printing its checksum.
    public static let successStatus: UInt8 = 0
    /// The status the guest writes on a CPU without long mode.
    public static let noLongModeStatus: UInt8 = 2

    /// LSR with THRE and TEMT set: the transmitter is always ready.
    static let lineStatusReady: UInt8 = 0x60
    static let lineStatusOffset: UInt16 = 5
    /// Where Intel's VMX keeps the real-mode TSS it needs (three pages below
    /// the reset page, outside RAM); other accelerators ignore it.
    static let tssAddress: UInt64 = 0xfffb_d000
    static let ramSlot: UInt32 = 0
    static let resetSlot: UInt32 = 1

    /// What a run of the guest gave.
    public struct RunResult: Sendable, Equatable {
        /// Every byte the guest wrote to the serial port, in order.
        public var output: [UInt8]
        /// The byte the guest wrote to the debug-exit port.
        public var status: UInt8
        /// KVM_RUN returns it took, the last one included.
        public var exitCount: Int
    }

    public let vm: VirtualMachine
    public let vcpu: VCPU

    /// Builds the machine on `hypervisor`: a new VM with the image and
    /// reset page mapped, and vCPU 0 in its reset state.
    public init(hypervisor: Hypervisor) throws(BuiltinGuestError) {
        let ram: GuestMemoryRegion
        let resetPage: GuestMemoryRegion
        do {
            ram = try GuestMemoryRegion(size: Self.memorySize)
            try ram.write(Self.image, at: Int(Self.loadAddress))
            resetPage = try GuestMemoryRegion(size: GuestMemoryRegion.pageSize)
            try resetPage.write(Self.resetVectorJump, at: Self.resetVectorOffset)
        } catch {
            throw .memory(error)
        }
        do {
            vm = try hypervisor.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setMemoryRegion(slot: Self.ramSlot, guestAddress: 0, region: ram)
            try vm.setMemoryRegion(slot: Self.resetSlot, guestAddress: Self.resetPageAddress, region: resetPage)
            vcpu = try vm.createVCPU(id: 0)
            // A vCPU starts with no CPUID leaves, and KVM refuses EFER.LME to
            // a guest whose CPUID does not show long mode.
            try vcpu.setCPUID(hypervisor.supportedCPUID())
        } catch {
            throw .kvm(error)
        }
    }

    /// The reset vector's offset in the reset page: 0xfffffff0 - 0xfffff000.
    static let resetVectorOffset = 0xff0
    /// `jmp far 0000:8000` (EA, IP, CS).
    static let resetVectorJump: [UInt8] = [
        0xea, UInt8(loadAddress & 0xff), UInt8(loadAddress >> 8), 0x00, 0x00,
    ]

    /// Runs the guest until it writes its status to the debug-exit port,
    /// handing each serial byte to `output` as it arrives. The guest
    /// stopping any other way (HLT, a triple fault, an instruction KVM
    /// cannot emulate...) is a `BuiltinGuestError.stopped`.
    public func run(output: (UInt8) -> Void = { _ in }) throws(BuiltinGuestError) -> RunResult {
        var collected: [UInt8] = []
        // The run loop appends without allocating for any output this guest gives.
        collected.reserveCapacity(4096)
        var exitCount = 0
        while true {
            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                throw .kvm(error)
            }
            exitCount += 1
            switch exit {
            case .io(let io) where io.direction == .out:
                if io.port == Self.debugExitPort {
                    return RunResult(output: collected, status: UInt8(truncatingIfNeeded: io.value), exitCount: exitCount)
                }
                if io.port == Self.serialPort {
                    Self.forEachTransmitted(io) { byte in
                        collected.append(byte)
                        output(byte)
                    }
                }
            case .io(let io):
                let answer = io.port == Self.serialPort + Self.lineStatusOffset ? Self.lineStatusReady : 0xff
                do {
                    try vcpu.setInput(repeatElement(answer, count: io.length))
                } catch {
                    throw .kvm(error)
                }
            case .interrupted:
                // A signal meant for the thread, not a request to stop: go on.
                continue
            default:
                throw .stopped(exit: exit, rip: currentRIP(), output: collected)
            }
        }
    }

    /// Each byte an `out` to the transmit register carries: the low byte of
    /// each access (a wider access's upper bytes go to the next registers).
    private static func forEachTransmitted(_ io: PortIO, _ body: (UInt8) -> Void) {
        if io.count == 1 {
            body(UInt8(truncatingIfNeeded: io.value))
            return
        }
        var index = 0
        while index < io.stringData.count {
            body(io.stringData[index])
            index += Int(io.size)
        }
    }

    /// The vCPU's RIP, for the error that says where the guest stopped;
    /// nil when even the registers cannot be read.
    private func currentRIP() -> UInt64? {
        try? vcpu.registers().rip
    }
}

/// Why the built-in guest did not run to its status write.
public enum BuiltinGuestError: Error, Equatable, CustomStringConvertible {
    /// Building or running the machine failed in the KVM API.
    case kvm(KVMError)
    /// Guest memory could not be allocated or loaded.
    case memory(GuestMemoryError)
    /// The guest stopped without writing to the debug-exit port. `rip` is
    /// where it stopped, when the vCPU's registers could be read; `output`
    /// is what it printed before.
    case stopped(exit: VCPUExit, rip: UInt64?, output: [UInt8])

    public var description: String {
        switch self {
        case .kvm(let error):
            return error.description
        case .memory(let error):
            return error.description
        case .stopped(let exit, let rip, _):
            let location = rip.map { " at RIP 0x\(String($0, radix: 16))" } ?? ""
            return "the guest stopped\(location) with \(Self.describe(exit)) before writing its status to port 0x\(String(BuiltinGuest.debugExitPort, radix: 16))"
        }
    }

    private static func describe(_ exit: VCPUExit) -> String {
        switch exit {
        case .halt:
            return "HLT (KVM_EXIT_HLT)"
        case .shutdown:
            return "a triple fault or reset (KVM_EXIT_SHUTDOWN)"
        case .internalError(let failure):
            let kinds: [UInt32: String] = [
                1: "an instruction KVM could not emulate", 2: "an exception while delivering another",
                3: "an event KVM could not deliver", 4: "an exit reason KVM did not expect",
            ]
            let kind = kinds[failure.suberror] ?? "suberror \(failure.suberror)"
            let data = failure.data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            return "\(kind) (KVM_EXIT_INTERNAL_ERROR, suberror \(failure.suberror), data [\(data)])"
        case .mmio(let access):
            return "an access to 0x\(String(access.address, radix: 16)), where there is no memory (KVM_EXIT_MMIO)"
        case .failEntry(let reason, _):
            return "a failed VM entry, hardware reason 0x\(String(reason, radix: 16)) (KVM_EXIT_FAIL_ENTRY)"
        default:
            return "the exit \(exit)"
        }
    }
}
