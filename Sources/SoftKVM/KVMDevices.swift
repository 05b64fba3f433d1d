import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

// KVM_CREATE_DEVICE and the device files (virt/kvm/kvm_main.c's
// kvm_ioctl_create_device and kvm_device_fops), with x86's one device
// type, kvm-vfio (virt/kvm/vfio.c).

/// A device (`struct kvm_device`). It keeps its VM alive, as the kernel's
/// kvm_get_kvm in create does; it is released when its last descriptor closes.
final class SoftDevice: Sendable {
    let vm: SoftVM
    let type: UInt32
    /// The VFIO files added to a kvm-vfio device, each held open by a
    /// descriptor of our own as the kernel holds a file reference.
    let vfioFiles = Mutex<[HeldFile]>([])

    struct HeldFile: Sendable {
        var descriptor: Int32
        var device: UInt64
        var inode: UInt64
    }

    init(vm: SoftVM, type: UInt32) {
        self.vm = vm
        self.type = type
    }

    /// kvm_vfio_release: the file references go.
    func release() {
        vfioFiles.withLock { files in
            for file in files { _ = Glibc.close(file.descriptor) }
            files.removeAll()
        }
    }
}

extension SoftBackend {
    /// The device types SoftKVM can create: KVM_DEV_TYPE_VFIO, as x86 KVM.
    static let supportedDeviceTypes: Set<UInt32> = [UInt32(KVM_DEV_TYPE_VFIO.rawValue)]

    /// KVM_CREATE_DEVICE (kvm_vm_ioctl's case and kvm_ioctl_create_device).
    func kvm_ioctl_create_device(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard var request = UserMemory.read(kvm_create_device.self, from: arg) else { return fail(.badAddress) }
        guard Self.supportedDeviceTypes.contains(request.type) else { return fail(.operationNotSupportedByDevice) }
        if request.flags & UInt32(KVM_CREATE_DEVICE_TEST) != 0 {
            return UserMemory.write(request, to: arg) ? 0 : fail(.badAddress)
        }
        let device = SoftDevice(vm: vm, type: request.type)
        // kvm_vfio_create: one kvm-vfio device per VM, under kvm->lock.
        let created: Int32 = vm.devices.withLock { devices in
            if devices.contains(where: { $0.type == device.type }) { return fail(.resourceBusy) }
            let descriptor = SoftBackend.anonymousDescriptor()
            guard descriptor >= 0 else { return descriptor }
            devices.append(device)
            return descriptor
        }
        guard created >= 0 else { return created }
        install(created, .device(device))
        request.fd = UInt32(bitPattern: created)
        guard UserMemory.write(request, to: arg) else {
            // The kernel leaves the descriptor installed when the copy back fails; so does this.
            return fail(.badAddress)
        }
        return 0
    }

    /// The device file's ioctl (kvm_device_ioctl).
    func kvm_device_ioctl(_ device: SoftDevice, _ request: UInt, _ arg: UInt) -> Int32 {
        if device.vm.creator != currentProcess() { return fail(.ioError) }
        switch request {
        case KVMRequest.setDeviceAttr.number:
            guard let attribute = UserMemory.read(kvm_device_attr.self, from: arg) else { return fail(.badAddress) }
            return kvm_vfio_set_attr(device, attribute)
        case KVMRequest.getDeviceAttr.number:
            // kvm-vfio has no get_attr: kvm_device_ioctl_attr refuses before copying.
            return fail(.notPermitted)
        case KVMRequest.hasDeviceAttr.number:
            guard let attribute = UserMemory.read(kvm_device_attr.self, from: arg) else { return fail(.badAddress) }
            return kvm_vfio_has_attr(attribute)
        default:
            return fail(.inappropriateIOCTLForDevice)
        }
    }

    /// The last descriptor of `device` closed (kvm_device_release).
    func kvm_device_release(_ device: SoftDevice) {
        device.vm.devices.withLock { devices in devices.removeAll { $0 === device } }
        device.release()
    }

    func kvm_vfio_has_attr(_ attribute: kvm_device_attr) -> Int32 {
        guard attribute.group == UInt32(KVM_DEV_VFIO_GROUP) else { return fail(.noSuchAddressOrDevice) }
        switch attribute.attr {
        case UInt64(KVM_DEV_VFIO_GROUP_ADD), UInt64(KVM_DEV_VFIO_GROUP_DEL): return 0
        default: return fail(.noSuchAddressOrDevice)
        }
    }

    /// kvm_vfio_set_attr and kvm_vfio_set_file.
    func kvm_vfio_set_attr(_ device: SoftDevice, _ attribute: kvm_device_attr) -> Int32 {
        guard attribute.group == UInt32(KVM_DEV_VFIO_GROUP) else { return fail(.noSuchAddressOrDevice) }
        let add = attribute.attr == UInt64(KVM_DEV_VFIO_GROUP_ADD)
        guard add || attribute.attr == UInt64(KVM_DEV_VFIO_GROUP_DEL) else { return fail(.noSuchAddressOrDevice) }
        guard let descriptor = UserMemory.read(Int32.self, from: UInt(truncatingIfNeeded: attribute.addr)) else {
            return fail(.badAddress)
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return fail(.badFileDescriptor) }
        let device64 = UInt64(status.st_dev), inode = UInt64(status.st_ino)
        return device.vfioFiles.withLock { files in
            let index = files.firstIndex { $0.device == device64 && $0.inode == inode }
            if add {
                guard Self.isVFIOFile(descriptor) else { return fail(.invalidArgument) }
                if index != nil { return fail(.fileExists) }
                let held = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
                guard held >= 0 else { return -errno }
                files.append(SoftDevice.HeldFile(descriptor: held, device: device64, inode: inode))
                return 0
            }
            guard let index else { return fail(.noSuchFileOrDirectory) }
            _ = Glibc.close(files.remove(at: index).descriptor)
            return 0
        }
    }

    /// vfio_file_is_valid: a VFIO group (/dev/vfio/N) or device file (the
    /// /dev/vfio/devices cdev, or the anonymous file VFIO_GROUP_GET_DEVICE_FD
    /// returns); not the container (/dev/vfio/vfio).
    static func isVFIOFile(_ descriptor: Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = readlink("/proc/self/fd/\(descriptor)", &buffer, buffer.count - 1)
        guard count > 0 else { return false }
        let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if target == "anon_inode:[vfio-device]" { return true }
        return target.hasPrefix("/dev/vfio/") && target != "/dev/vfio/vfio"
    }
}
